"""The exceptions of pytest-resilience, and ``classify()``.

Every error the core and the backends raise derives from :class:`ResilienceError`. Where a
standard exception already means the same thing, ours derives from it too, so code that
catches ``TimeoutError``, ``ConnectionError`` or ``MemoryError`` keeps working. The two
signals that stop the work rather than fail it derive from :class:`ResilienceInterrupt`
instead, a ``BaseException``::

    ResilienceError (Exception)
    ├── RetryError                 retries exhausted; .attempts, .last (also __cause__), .result
    ├── CircuitOpenError           call rejected by an open breaker; .breaker, .retry_after
    ├── FallbackError              every step of a fallback chain failed; .failures
    ├── DeadlineExceeded           (TimeoutError) a deadline scope ran out; .budget
    │   └── StreamStalled          no chunk within the idle/first-token deadline; .partial
    ├── StreamInterrupted          a stream ended early; .partial, .reason
    ├── CheckpointError            a checkpoint file is bad, truncated or foreign; .path
    └── BackendError               a model backend failed
        ├── ModelNotFound          the model file is missing or invalid; .path
        ├── ResourceExhausted      (MemoryError) allocation or context creation failed
        ├── InvalidOutput          corrupt text, bad JSON, wrong-shape or non-finite vector
        ├── RateLimited            HTTP 429; .retry_after
        ├── ServerError            HTTP 5xx; .status
        └── DaemonUnavailable      (ConnectionError) the daemon cannot be reached
            └── DaemonLost         the connection died mid-request; .partial

    ResilienceInterrupt (BaseException, not Exception)
    ├── Cancelled                  the enclosing cancel scope was cancelled; .reason
    └── HangDetected               a wait that no deadline can ever end (virtual clock)

``Cancelled`` and ``HangDetected`` are not failures: they stop the work. Like
``asyncio.CancelledError`` and ``trio.Cancelled`` they derive from ``BaseException``, so an
``except Exception`` does not catch them, and no resilience primitive handles them: retry
never retries them, a breaker counts them as neither success nor failure (a half-open probe
slot is given back), a fallback chain, the resilient client and a recovery never fall back
on them, a health check does not turn them into a result. A hang must reach the test and
fail it naming the wait; a cancellation must reach the code that cancelled. (The stream
guard reports a cancelled stream as ``StreamInterrupted`` from the ``Cancelled``, with the
partial text, and lets a hang through.) ``classify()`` is not asked about them; given one,
it says ``Cancelled`` is a permanent "fail" and ``HangDetected`` unknown.

``classify(exc)`` turns any exception into a :class:`Classification` (category, severity,
retryable, suggested action, a Retry-After hint). The rules are data: a
:class:`Classifier` holds an ordered list of rules, matched by exception type (given as a
class or as a dotted name, so third-party types plug in without importing them), by HTTP
status, or by message text. ``DEFAULT_CLASSIFIER.extended(...)`` returns a new classifier
with extra rules in front; the default is never mutated.
"""

from __future__ import annotations

import enum
import functools
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "Action",
    "BackendError",
    "Cancelled",
    "Category",
    "CheckpointError",
    "CircuitOpenError",
    "Classification",
    "Classifier",
    "DaemonLost",
    "DaemonUnavailable",
    "DeadlineExceeded",
    "ExceptionFilter",
    "FallbackError",
    "HangDetected",
    "InvalidOutput",
    "ModelNotFound",
    "RateLimited",
    "ResilienceError",
    "ResilienceInterrupt",
    "ResourceExhausted",
    "RetryError",
    "Rule",
    "ServerError",
    "Severity",
    "StreamInterrupted",
    "StreamStalled",
    "classify",
    "exception_filter",
]


class ResilienceError(Exception):
    """Base class of every error raised by pytest-resilience."""


class RetryError(ResilienceError):
    """Every attempt failed, or the budget ran out. The last failure is ``__cause__``.

    When the last attempt returned a rejected result instead of raising, ``last`` is None and
    ``result`` holds that result.
    """

    def __init__(
        self,
        attempts: int,
        last: BaseException | None,
        reason: str = "",
        *,
        result: object = None,
    ) -> None:
        self.attempts = attempts
        self.last = last
        self.reason = reason
        self.result = result
        what = f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}"
        if reason:
            what += f" ({reason})"
        if last is not None:
            what += f": {type(last).__name__}: {last}"
        else:
            what += f": result rejected: {reprlib.repr(result)}"
        super().__init__(what)


class CircuitOpenError(ResilienceError):
    """The breaker rejected the call without running it.

    ``CircuitOpenError(breaker, state, retry_after=None)``. It is raised on every rejected
    call, so it has no Python ``__init__``: the fields are read from ``args`` and the message
    is formatted only when somebody reads it.
    """

    @property
    def breaker(self) -> str:
        return str(self.args[0])

    @property
    def state(self) -> str:
        return str(self.args[1])

    @property
    def retry_after(self) -> float | None:
        value = self.args[2] if len(self.args) > 2 else None
        return float(value) if value is not None else None

    def __str__(self) -> str:
        hint = f"; retry in {self.retry_after:.3g}s" if self.retry_after is not None else ""
        return f"circuit {self.breaker!r} is {self.state}{hint}"


class FallbackError(ResilienceError):
    """Every step of a fallback chain failed. ``failures`` maps step name to what happened."""

    def __init__(self, chain: str, failures: Sequence[tuple[str, BaseException | None]]) -> None:
        self.chain = chain
        self.failures = tuple(failures)
        parts = ", ".join(
            f"{name}: {type(exc).__name__ if exc is not None else 'rejected result'}"
            for name, exc in self.failures
        )
        super().__init__(f"every step of fallback chain {chain!r} failed ({parts})")


class ResilienceInterrupt(BaseException):
    """The base of what stops the work instead of failing it: ``Cancelled``, ``HangDetected``.

    A ``BaseException`` that is not an ``Exception``, as ``asyncio.CancelledError`` is: it goes
    through every retry, breaker, fallback chain and client unhandled.
    """


class Cancelled(ResilienceInterrupt):
    """The enclosing cancel scope was cancelled explicitly.

    Not an ``Exception`` (see :class:`ResilienceInterrupt`): never retried, never a reason
    to fall back, never counted by a breaker.
    """

    def __init__(self, reason: str = "cancelled") -> None:
        self.reason = reason
        super().__init__(reason)


class DeadlineExceeded(ResilienceError, TimeoutError):
    """A deadline scope ran out of time."""

    def __init__(self, message: str = "deadline exceeded", *, budget: float | None = None) -> None:
        self.budget = budget
        super().__init__(message)


class StreamStalled(DeadlineExceeded):
    """A stream produced no chunk within its first-token or idle deadline.

    ``partial`` is the text received before the stall; ``which`` is ``"first_token"``,
    ``"idle"`` or ``"total"``.
    """

    def __init__(self, which: str, waited: float, partial: str = "") -> None:
        self.which = which
        self.waited = waited
        self.partial = partial
        super().__init__(
            f"stream stalled: no chunk for {waited:.3g}s ({which} deadline), "
            f"{len(partial)} characters received",
            budget=waited,
        )


class HangDetected(ResilienceInterrupt):
    """A wait that no deadline can ever end: the code under test would hang forever.

    Raised by :class:`~pytest_resilience.core.clock.VirtualClock`, naming the waiter. Not an
    ``Exception`` (see :class:`ResilienceInterrupt`): it must reach the test and fail it, so
    no retry, breaker, fallback or client handles it.
    """


class StreamInterrupted(ResilienceError):
    """A stream ended before it was complete; ``partial`` keeps what arrived."""

    def __init__(self, reason: str, partial: str = "") -> None:
        self.reason = reason
        self.partial = partial
        super().__init__(f"stream interrupted ({reason}) after {len(partial)} characters")


class CheckpointError(ResilienceError):
    """A checkpoint cannot be read: missing, truncated, corrupt, foreign or for another key.

    ``path`` is the file; the message says what is wrong with it.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"checkpoint {path}: {problem}")

    def __reduce__(self) -> tuple[type[CheckpointError], tuple[str, str]]:
        return (type(self), (self.path, self.problem))


class BackendError(ResilienceError):
    """A model backend failed."""


class ModelNotFound(BackendError):
    """The model file is missing, unreadable or not a valid model."""

    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        super().__init__(f"model not found or invalid: {path}" + (f" ({detail})" if detail else ""))


class ResourceExhausted(BackendError, MemoryError):
    """Memory or context allocation failed (llama.cpp's "failed to create context", OOM)."""


class InvalidOutput(BackendError):
    """The model answered, but the answer is unusable (empty, bad JSON, NaN, wrong shape)."""


class RateLimited(BackendError):
    """The server said 429; ``retry_after`` is its Retry-After in seconds, if it sent one."""

    def __init__(self, message: str = "rate limited", *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ServerError(BackendError):
    """The server answered with a 5xx status."""

    def __init__(self, status: int, message: str = "") -> None:
        self.status = status
        super().__init__(f"server error {status}" + (f": {message}" if message else ""))


class DaemonUnavailable(BackendError, ConnectionError):
    """The model daemon cannot be reached (refused, not running, frozen)."""


class DaemonLost(DaemonUnavailable):
    """The connection to the daemon died mid-request; ``partial`` keeps what arrived."""

    def __init__(self, message: str = "daemon lost", *, partial: str = "") -> None:
        self.partial = partial
        super().__init__(message)


# --------------------------------------------------------------------------- classification


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
        return not (self.pattern and not _compiled(self.pattern).search(str(exc)))


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _http_status(exc: BaseException) -> int | None:
    for obj in (exc, getattr(exc, "response", None)):
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
    headers = getattr(getattr(exc, "response", None), "headers", None)
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
        "httpx-timeout",
        C.TIMEOUT,
        S.MEDIUM,
        True,
        A.RETRY,
        types=("httpx.TimeoutException",),
    ),
    Rule("connection", C.CONNECTION, S.HIGH, True, A.RETRY, types=(ConnectionError,)),
    Rule(
        "httpx-transport",
        C.CONNECTION,
        S.HIGH,
        True,
        A.RETRY,
        types=("httpx.TransportError",),
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

#: What counts: an exception class, a tuple of them, or a predicate.
ExceptionFilter = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)


def exception_filter(
    spec: ExceptionFilter, what: str = "on"
) -> tuple[tuple[type[BaseException], ...] | None, Callable[[BaseException], bool]]:
    """``(types, predicate)`` for an ``on=``-style argument; types are None for a predicate.

    Raises ``TypeError`` naming the argument ``what`` when ``spec`` is neither.
    """
    if isinstance(spec, type | tuple):
        types = spec if isinstance(spec, tuple) else (spec,)
        bad = [t for t in types if not (isinstance(t, type) and issubclass(t, BaseException))]
        if bad:
            raise TypeError(f"{what}= takes exception classes, got {bad!r}")
        return types, lambda exc: isinstance(exc, types)
    if callable(spec):
        return None, spec
    raise TypeError(f"{what}= takes an exception class, a tuple of them or a predicate: {spec!r}")


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
                if not _compiled(rule.pattern).search(text):
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
