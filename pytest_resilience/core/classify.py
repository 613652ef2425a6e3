"""``classify()``: what kind of failure an exception is, and what to do about it.

``classify(exc)`` turns any exception into a :class:`Classification` (category, severity,
retryable, suggested action, a Retry-After hint). The rules are data: a
:class:`Classifier` holds an ordered list of rules, matched by exception type (given as a
class or as a dotted name, so third-party types plug in without importing them), by HTTP
status, or by message text. ``DEFAULT_CLASSIFIER.extended(...)`` returns a new classifier
with extra rules in front; the default is never mutated. The exceptions it knows are those
of :mod:`pytest_resilience.core.errors`, which exports these names too.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .errors import (
    Cancelled,
    CircuitOpenError,
    DaemonUnavailable,
    DeadlineExceeded,
    InvalidOutput,
    ModelNotFound,
    RateLimited,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DEFAULT_CLASSIFIER",
    "DEFAULT_RULES",
    "Action",
    "Category",
    "Classification",
    "Classifier",
    "Rule",
    "Severity",
    "classify",
]


class Category(enum.StrEnum):
    """What kind of failure: decides whether waiting, retrying or falling back can help."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    RESOURCE = "resource"
    CONNECTION = "connection"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    UNKNOWN = "unknown"


class Severity(enum.IntEnum):
    """How bad a failure is for the application, from LOW to CRITICAL."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4


class Action(enum.StrEnum):
    """What the classifier suggests doing about a failure."""

    RETRY = "retry"  # try again soon
    RETRY_LATER = "retry_later"  # wait for the hinted delay, then try again
    FALLBACK = "fallback"  # use another backend or model
    REDUCE_LOAD = "reduce_load"  # degrade: fewer tokens, smaller model
    FAIL = "fail"  # do not retry; report
    INVESTIGATE = "investigate"  # unknown: let a human look


@dataclass(frozen=True, slots=True)
class Classification:
    """What kind of failure an exception is, and what to do about it."""

    category: Category
    severity: Severity
    retryable: bool
    action: Action
    retry_after: float | None = None
    rule: str = ""  # which rule matched, for the journal and for debugging


@dataclass(frozen=True)  # no slots: ``classification`` is cached in the instance dict
class Rule:
    """One row of the classification table.

    A rule matches when every condition it has matches: ``types`` (classes, or dotted names
    such as ``"httpx.ConnectError"`` matched against the exception's MRO), ``status`` (an
    HTTP status read from ``exc.status``, ``exc.status_code`` or ``exc.response.status_code``),
    and ``pattern`` (a case-insensitive regex searched in ``str(exc)``).
    """

    name: str
    category: Category
    severity: Severity
    retryable: bool
    action: Action
    types: tuple[type[BaseException] | str, ...] = ()
    status: frozenset[int] = field(default_factory=frozenset)
    pattern: str | None = None

    @functools.cached_property
    def classification(self) -> Classification:
        """What this rule says, without a Retry-After hint (built once: rules are fixed)."""
        return Classification(
            self.category, self.severity, self.retryable, self.action, rule=self.name
        )

    def matches(self, exc: BaseException) -> bool:
        return self.matches_type(type(exc)) and self.matches_instance(exc)

    def matches_type(self, cls: type[BaseException]) -> bool:
        if not self.types:
            return True
        names = {f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__}
        return any(t in names if isinstance(t, str) else issubclass(cls, t) for t in self.types)

    def matches_instance(self, exc: BaseException) -> bool:
        """The conditions that depend on the instance: HTTP status and message text."""
        if self.status and _http_status(exc) not in self.status:
            return False
        return not (self.pattern and not self.regex.search(str(exc)))

    @functools.cached_property
    def regex(self) -> re.Pattern[str]:
        """``pattern``, compiled case-insensitive (once: rules are fixed)."""
        return _compiled(self.pattern or "")


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _http_status(exc: BaseException) -> int | None:
    for obj in (exc, getattr(exc, "response", None)):
        if obj is None:  # no response: nothing to read (and None has no status)
            continue
        for attr in ("status", "status_code"):
            value = getattr(obj, attr, None)
            if isinstance(value, int):
                return value
    return None


def _retry_after(exc: BaseException) -> float | None:
    """A Retry-After hint carried by the exception itself or by its HTTP response."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and value >= 0:
        return float(value)
    response = getattr(exc, "response", None)
    headers = None if response is None else getattr(response, "headers", None)
    if headers is not None:
        raw = None
        if hasattr(headers, "get"):  # httpx's headers ignore case; a plain dict does not
            raw = headers.get("retry-after", headers.get("Retry-After"))
        try:
            seconds = float(raw) if raw is not None else None
        except ValueError:
            seconds = None  # an HTTP date: not worth a date parser here
        if seconds is not None and seconds >= 0:
            return seconds
    return None


C, S, A = Category, Severity, Action

#: The table the seeds describe, most specific first. Our own errors come first so that,
#: for instance, ``DaemonLost`` is a connection error even though its text says "lost".
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("deadline", C.TIMEOUT, S.MEDIUM, True, A.RETRY, types=(DeadlineExceeded,)),
    Rule("circuit-open", C.TRANSIENT, S.MEDIUM, False, A.FALLBACK, types=(CircuitOpenError,)),
    Rule("cancelled", C.PERMANENT, S.LOW, False, A.FAIL, types=(Cancelled,)),
    Rule("rate-limited", C.RATE_LIMITED, S.LOW, True, A.RETRY_LATER, types=(RateLimited,)),
    Rule("daemon", C.CONNECTION, S.HIGH, True, A.FALLBACK, types=(DaemonUnavailable,)),
    Rule("model-not-found", C.PERMANENT, S.CRITICAL, False, A.FAIL, types=(ModelNotFound,)),
    Rule("invalid-output", C.TRANSIENT, S.MEDIUM, True, A.RETRY, types=(InvalidOutput,)),
    Rule("memory", C.RESOURCE, S.HIGH, False, A.REDUCE_LOAD, types=(MemoryError,)),
    Rule("http-429", C.RATE_LIMITED, S.LOW, True, A.RETRY_LATER, status=frozenset({429})),
    Rule(
        "http-5xx",
        C.TRANSIENT,
        S.MEDIUM,
        True,
        A.RETRY,
        status=frozenset(range(500, 600)) - {501},  # 501: the server will never do it
    ),
    Rule(
        "http-4xx",
        C.PERMANENT,
        S.MEDIUM,
        False,
        A.FAIL,
        status=frozenset(range(400, 500)) | {501},
    ),
    Rule("timeout", C.TIMEOUT, S.MEDIUM, True, A.RETRY, types=(TimeoutError,)),
    Rule(
        "client-timeout",
        C.TIMEOUT,
        S.MEDIUM,
        True,
        A.RETRY,
        types=(
            "httpx.TimeoutException",
            "httpx2.TimeoutException",
            "openai.APITimeoutError",
            "requests.exceptions.Timeout",
        ),
    ),
    Rule("connection", C.CONNECTION, S.HIGH, True, A.RETRY, types=(ConnectionError,)),
    Rule(
        "client-connection",
        C.CONNECTION,
        S.HIGH,
        True,
        A.RETRY,
        types=(
            "httpx.TransportError",
            "httpx2.TransportError",
            "openai.APIConnectionError",
            "requests.exceptions.ConnectionError",
            "aiohttp.client_exceptions.ClientConnectionError",
        ),
    ),
    Rule(
        "rate-limit-text",
        C.RATE_LIMITED,
        S.LOW,
        True,
        A.RETRY_LATER,
        pattern=r"rate.?limit|\b429\b",
    ),
    Rule(
        "oom-text",
        C.RESOURCE,
        S.HIGH,
        False,
        A.REDUCE_LOAD,
        pattern=r"out of memory|failed to (allocate|create (llama_)?context)|\boom\b",
    ),
    Rule(
        "model-missing-text",
        C.PERMANENT,
        S.CRITICAL,
        False,
        A.FAIL,
        pattern=r"model.*not found|no such file|failed to load model",
    ),
    Rule("bad-input", C.PERMANENT, S.MEDIUM, False, A.FAIL, types=(ValueError, TypeError)),
    Rule("os", C.RESOURCE, S.HIGH, False, A.INVESTIGATE, types=(OSError,)),
)

del C, S, A

_UNSET = object()

AnyRule = Rule | Callable[[BaseException], Classification | None]

_UNKNOWN = Classification(
    Category.UNKNOWN, Severity.MEDIUM, False, Action.INVESTIGATE, rule="unknown"
)


class Classifier:
    """An ordered rule table; the first matching rule classifies the exception.

    A rule is a :class:`Rule` or any callable ``(exc) -> Classification | None``, so a backend
    can plug in knowledge that a table row cannot express.
    """

    def __init__(
        self, rules: Iterable[Rule | Callable[[BaseException], Classification | None]]
    ) -> None:
        self.rules = tuple(rules)
        self._by_type: dict[type[BaseException], tuple[AnyRule, ...]] = {}

    def extended(
        self, *rules: Rule | Callable[[BaseException], Classification | None]
    ) -> Classifier:
        """A new classifier that tries ``rules`` first, then this one's."""
        return Classifier((*rules, *self.rules))

    def __call__(self, exc: BaseException) -> Classification:
        status: int | object | None = _UNSET  # read once, and only if some rule asks
        text: str | None = None
        for rule in self._candidates(type(exc)):
            if not isinstance(rule, Rule):
                found = rule(exc)
                if found is not None:
                    return found
                continue
            if rule.status:
                if status is _UNSET:
                    status = _http_status(exc)
                if status not in rule.status:
                    continue
            if rule.pattern is not None:
                if text is None:
                    text = str(exc)
                if not rule.regex.search(text):
                    continue
            hint = _retry_after(exc)
            return (
                rule.classification
                if hint is None
                else replace(rule.classification, retry_after=hint)
            )
        return _UNKNOWN

    def _candidates(self, cls: type[BaseException]) -> tuple[AnyRule, ...]:
        """The rules whose type condition ``cls`` meets, in order; computed once per type.

        Type checks walk the MRO (and build its dotted names) once per exception class
        instead of once per rule per call, which keeps ``classify`` cheap enough to run on
        every failed attempt.
        """
        found = self._by_type.get(cls)
        if found is None:
            found = tuple(r for r in self.rules if not isinstance(r, Rule) or r.matches_type(cls))
            self._by_type[cls] = found  # a racing thread computes the same tuple
        return found


DEFAULT_CLASSIFIER = Classifier(DEFAULT_RULES)


def classify(exc: BaseException, classifier: Classifier = DEFAULT_CLASSIFIER) -> Classification:
    """Classify ``exc`` with the default table (or the one given).

    Never raises: an exception no rule knows is ``Category.UNKNOWN``, not retryable.
    """
    return classifier(exc)
