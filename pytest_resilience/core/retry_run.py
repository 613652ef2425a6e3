"""One retried call: the decisions after each failure, the events, and the loop form.

A :class:`~pytest_resilience.core.retry.Retry` policy starts a :class:`_Run` for each call
it retries (after the first failure; from the start under a budget): the run knows which
attempt it is at, when the budget ends and the previous delay, and decides after each
failed attempt whether to wait and try again, re-raise, or give up, recording the events
on the way. The same run drives the loop form (``for attempt in retry: with attempt:``),
through :class:`Attempt`. The rules are in the :mod:`pytest_resilience.core.retry`
docstring.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from .cancel import CancelScope, current_scope
from .classify import classify
from .errors import DeadlineExceeded, RetryError
from .events import (
    AttemptFailed,
    AttemptStarted,
    CallFailed,
    CallSucceeded,
    GaveUp,
    RetryScheduled,
    event_maker,
)

if TYPE_CHECKING:
    from types import TracebackType

    from .classify import Classification
    from .retry import Retry

__all__ = ["Attempt", "RetryDetails"]

#: Less budget than this counts as none: no attempt can run in it.
_NO_TIME = 1e-6

_attempt_failed = event_maker(AttemptFailed)
_attempt_started = event_maker(AttemptStarted)
_retry_scheduled = event_maker(RetryScheduled)
_gave_up = event_maker(GaveUp)
_call_succeeded = event_maker(CallSucceeded)
_call_failed = event_maker(CallFailed)


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """What ``on_retry`` receives just before a wait."""

    source: str  # the policy's name, or the decorated function's qualified name
    attempt: int  # the attempt that failed, from 1
    delay: float  # the wait before the next attempt
    exception: BaseException | None  # None when the result was rejected
    result: object = None  # the rejected result, if that was the failure


# --------------------------------------------------------------------------- one run


class _Run:
    """The state of one retried call: which attempt, the budget's end, the previous delay."""

    __slots__ = ("attempt", "end", "policy", "prev", "source", "start")

    def __init__(self, policy: Retry, source: str, attempt: int = 1) -> None:
        self.policy = policy
        self.source = source
        self.attempt = attempt
        self.prev: float | None = None
        budget = policy.budget
        self.end = None if budget is None else policy.clock.now() + budget
        # when the call began, if its outcome is recorded (``outcomes=True``); else None
        self.start = policy.clock.now() if policy._scratch and policy.outcomes else None

    def left(self) -> float:
        assert self.end is not None
        return max(0.0, self.end - self.policy.clock.now())

    def failed(self, exc: Exception) -> float | None:
        """Decide after a failed attempt: the delay before the next one, or None to re-raise
        ``exc`` unchanged. Raises ``RetryError`` (from ``exc``) on giving up.

        Only ever sees an ``Exception``: ``Cancelled`` and ``HangDetected`` are not caught."""
        p = self.policy
        outer = current_scope()
        if outer is not None and (outer.cancelled or outer.expired):
            self._record(exc, None, "cancelled")
            return None
        types = p._types
        matched = isinstance(exc, types) if types is not None else p._match(exc)
        left = None if self.end is None else self.left()
        if left is not None and left <= _NO_TIME and (matched or isinstance(exc, DeadlineExceeded)):
            self._give_up(exc, None, "budget")
            return None
        if not matched:
            self._record(exc, None, "not retryable")
            return None
        if self.attempt >= p.attempts:
            self._give_up(exc, None, "attempts")
            return None
        delay = 0.0 if p._no_wait else self._backoff()
        # The default table only finds a Retry-After hint in exc.retry_after or exc.response:
        # skip the full classification (several regex searches) when neither is there.
        if (
            p.classifier is not None
            or getattr(exc, "retry_after", None) is not None
            or getattr(exc, "response", None) is not None
        ):
            hint = self._classify(exc).retry_after
            if hint is not None and hint > delay:
                delay = hint
        if left is not None and delay >= left:  # the wait would eat the rest of the budget
            self._give_up(exc, None, "budget")
            return None
        if not p._quiet:
            self._announce(delay, exc, None)
        return delay

    def rejected(self, result: object) -> float:
        """Like :meth:`failed`, for a result that ``on_result`` rejected."""
        p = self.policy
        if self.attempt >= p.attempts:
            self._give_up(None, result, "attempts")
        delay = self._backoff()
        if self.end is not None:
            left = self.left()
            if left <= _NO_TIME or delay >= left:
                self._give_up(None, result, "budget")
        if not p._quiet:
            self._announce(delay, None, result)
        return delay

    def _backoff(self) -> float:
        p = self.policy
        delay = p.backoff.delay(self.attempt, p._rng, self.prev)
        self.prev = delay
        return delay

    def _classify(self, exc: Exception) -> Classification:
        classifier = self.policy.classifier
        return classify(exc) if classifier is None else classifier(exc)

    def _announce(self, delay: float, exc: Exception | None, result: object) -> None:
        p = self.policy
        if p.journal is not None:
            now = p.clock.now()
            p.journal.append(self._failure_event(now, exc, result))
            p.journal.append(
                _retry_scheduled(
                    time=now, source=self.source, attempt=self.attempt + 1, delay=delay
                )
            )
        if p.on_retry is not None:
            p.on_retry(RetryDetails(self.source, self.attempt, delay, exc, result))

    def _give_up(self, exc: Exception | None, result: object, reason: str) -> None:
        """Record the end; return (so the caller re-raises ``exc``) or raise ``RetryError``."""
        self._record(exc, result, reason)
        if exc is not None and self.policy.reraise:
            return
        raise RetryError(self.attempt, exc, reason, result=result) from exc

    def _record(self, exc: Exception | None, result: object, reason: str) -> None:
        journal = self.policy.journal
        if journal is None:
            return
        now = self.policy.clock.now()
        failure = self._failure_event(now, exc, result)
        journal.append(failure)
        journal.append(
            _gave_up(
                time=now,
                source=self.source,
                attempts=self.attempt,
                error=failure.error,
                reason=reason,
            )
        )
        if self.start is not None:
            severity = "medium" if exc is None else self._classify(exc).severity.name.lower()
            journal.append(
                _call_failed(
                    time=now,
                    source=self.source,
                    duration=now - self.start,
                    error=failure.error,
                    category=failure.category,
                    severity=severity,
                    attempts=self.attempt,
                )
            )

    def succeeded(self) -> None:
        """Record the call's success (only for a run that times its call: ``start`` set)."""
        policy = self.policy
        assert policy.journal is not None
        assert self.start is not None
        now = policy.clock.now()
        policy.journal.append(
            _call_succeeded(
                time=now, source=self.source, duration=now - self.start, attempts=self.attempt
            )
        )

    def _failure_event(self, now: float, exc: Exception | None, result: object) -> AttemptFailed:
        if exc is None:
            error, category = f"result: {reprlib.repr(result)}", "result"
        else:
            found = self._classify(exc)
            error, category = f"{type(exc).__name__}: {exc}", str(found.category)
        return _attempt_failed(
            time=now, source=self.source, attempt=self.attempt, error=error, category=category
        )

    def _started(self) -> None:
        policy = self.policy
        assert policy.journal is not None
        policy.journal.append(
            _attempt_started(time=policy.clock.now(), source=self.source, attempt=self.attempt)
        )

    def pause(self, delay: float) -> None:
        """Wait ``delay`` (no sleep call at all for 0) and move on to the next attempt."""
        if delay > 0:
            self.policy.clock.sleep(delay)
        self.attempt += 1
        if self.policy.journal is not None:
            self._started()

    async def apause(self, delay: float) -> None:
        if delay > 0:
            await self.policy.clock.asleep(delay)
        self.attempt += 1
        if self.policy.journal is not None:
            self._started()


# ------------------------------------------------------------------------- loop form


class Attempt:
    """One attempt of the loop form; ``with attempt:`` (or ``async with``) runs it.

    Leaving the block with a retryable exception swallows it and lets the loop go on (after
    the wait); giving up raises ``RetryError`` (or re-raises, with ``reraise=True``) from the
    ``with`` statement. ``on_result`` does not apply here: the block has no result.
    """

    __slots__ = ("_delay", "_done", "_run", "_scope", "number")

    def __init__(self, run: _Run) -> None:
        self._run = run
        self.number = run.attempt
        self._scope: CancelScope | None = None
        self._delay: float | None = None  # set when the attempt failed and will be retried
        self._done = False  # pragma: no mutate - only its truth is read: None would do alike

    def __repr__(self) -> str:
        return f"<Attempt {self.number} of {self._run.policy.attempts}>"

    def _open(self) -> CancelScope | None:
        if self._done:
            raise RuntimeError("an Attempt can be entered only once")
        self._done = True
        run = self._run
        if run.end is not None:
            self._scope = CancelScope(run.left(), clock=run.policy.clock, name="retry budget")
        return self._scope

    def _close(self, exc: BaseException | None) -> bool:
        if not isinstance(exc, Exception):  # success, Cancelled, HangDetected, ^C: not ours
            if exc is None and self._run.start is not None:
                self._run.succeeded()
            return False
        self._delay = self._run.failed(exc)
        return self._delay is not None

    def __enter__(self) -> Self:
        scope = self._open()
        if scope is not None:
            scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._scope is not None:
            # no mutate: a scope's sync __exit__ reads none of its arguments
            self._scope.__exit__(exc_type, exc, tb)  # pragma: no mutate
        return self._close(exc)

    async def __aenter__(self) -> Self:
        scope = self._open()
        if scope is not None:
            await scope.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._scope is not None:
            try:
                await self._scope.__aexit__(exc_type, exc, tb)
            except DeadlineExceeded as expired:  # the scope turned our cancellation into this
                if self._close(expired):
                    return True
                raise
        return self._close(exc)


class _Attempts:
    """The iterator behind ``for attempt in retry`` and ``async for``."""

    __slots__ = ("_last", "_run")

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._last: Attempt | None = None

    def __iter__(self) -> Self:
        return self

    def __aiter__(self) -> Self:
        return self

    def _step(self) -> float | None:
        """The wait before the next attempt; None when the loop is over."""
        last = self._last
        if last is None:
            # no mutate: only not-None matters here; no wait comes before the first attempt
            return 0.0  # pragma: no mutate
        return last._delay

    def __next__(self) -> Attempt:
        delay = self._step()
        if delay is None:
            raise StopIteration
        if self._last is not None:
            self._run.pause(delay)
        self._last = Attempt(self._run)
        return self._last

    async def __anext__(self) -> Attempt:
        delay = self._step()
        if delay is None:
            raise StopAsyncIteration
        if self._last is not None:
            await self._run.apause(delay)
        self._last = Attempt(self._run)
        return self._last
