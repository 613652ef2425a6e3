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
    ├── HangDetected               a wait that no deadline can ever end (virtual clock)
    └── ConcurrentModelUse         one llama_cpp.Llama used by two generations at once;
                                   .first, .second (the two call sites)

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

``ConcurrentModelUse`` is the third: a bug in the application, found by the test's
detector (:mod:`faults.model_use`), not a failure of the model. Retrying the call, counting
it against a breaker or answering from a fallback would hide the bug, and an application's
``except Exception`` would swallow it, so it stops the work like a hang does. ``classify()``
says it is unknown, never retryable.

``classify(exc)`` turns any exception into a :class:`Classification`: see
:mod:`pytest_resilience.core.classify`, which imports this module (not the other way), so
that a module that only raises these errors does not build the rule table.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


__all__ = [
    "BackendError",
    "Cancelled",
    "CheckpointError",
    "CircuitOpenError",
    "ConcurrentModelUse",
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
    "ServerError",
    "StreamInterrupted",
    "StreamStalled",
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


class ConcurrentModelUse(ResilienceInterrupt):
    """A ``llama_cpp.Llama`` was called while another generation on it is still running (in
    another thread) or still open (a stream neither exhausted nor closed).

    One ``Llama`` holds one context: two generations at once corrupt its state or crash.
    ``first`` is where the generation still in progress was started, ``second`` where the
    refused call was made (each ``file:line in function``); ``how`` says whether the first
    is ``"running"`` in another thread or an ``"open"`` stream. Not an ``Exception`` (see
    :class:`ResilienceInterrupt`): it is the application's bug, so no retry, breaker,
    fallback or ``except Exception`` of the application may absorb it.
    """

    def __init__(self, message: str, *, first: str = "", second: str = "", how: str = "") -> None:
        self.first = first
        self.second = second
        self.how = how
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_concurrent, (str(self), self.first, self.second, self.how))


def _rebuild_concurrent(message: str, first: str, second: str, how: str) -> ConcurrentModelUse:
    return ConcurrentModelUse(message, first=first, second=second, how=how)


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
