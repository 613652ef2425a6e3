"""What the sync and async guarded streams share: the deadlines, the text, the events.

A :class:`_Guarded` stream keeps the chunks delivered so far, the deadline for the next one
(first-token, then idle, never past the total), and records the journal events; how it
ends is a :class:`StreamResult`. The rules are in :mod:`pytest_resilience.core.stream`.

With a journal, a stream is a span (``stream:<name>``, :mod:`pytest_resilience.core.trace`):
opened when the stream starts, a child of the span current there; the source runs inside
it, the stream's events carry its ids, and it ends with the stream's last event (or, for a
complete stream, which records none, as it completes). A stream dropped without being
closed ends no span (the garbage collector's finaliser announces nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from .errors import StreamInterrupted, StreamStalled
from .events import (
    FallbackUsed,
    StallDetected,
    StreamCancelled,
    StreamCapped,
    StreamEmpty,
    StreamFirstToken,
    StreamInvalid,
)
from .trace import start_span

if TYPE_CHECKING:
    from .events import Event
    from .stream import StreamGuard
    from .trace import OpenSpan

__all__ = ["OnStall", "StreamResult", "Validator"]

_INF = float("inf")
OnStall = Literal["raise", "return"]
#: A token validator: takes a chunk's text, returns false (or raises ``ValueError``) to reject it.
Validator: TypeAlias = Callable[[str], object]


@dataclass(frozen=True, slots=True)
class StreamResult:
    """How a guarded stream ended.

    ``reason`` is ``"complete"``, ``"empty"`` (the source ran out without a visible
    character), ``"invalid"`` (a validator rejected a chunk), ``"capped"`` (the next chunk
    would have passed ``max_chunks`` or ``max_chars``), ``"first_token"``, ``"idle"``,
    ``"total"``, ``"cancelled"``, ``"error"`` or ``"closed"``; only ``"complete"`` is
    complete. ``detail`` says more (the cancel reason, the error, the validator, the cap).
    ``buffered`` is true when the end came from buffered generation after an out-of-memory
    error; ``first_token`` is the first chunk's latency, or None if none arrived.
    """

    text: str
    complete: bool
    reason: str
    detail: str = ""
    buffered: bool = False
    first_token: float | None = None


class _Guarded:
    """Bookkeeping shared by the sync and async guarded streams."""

    def __init__(self, guard: StreamGuard) -> None:
        self._guard = guard
        self._clock = guard.clock
        self._now = guard.clock.now
        self._journal = guard.journal
        self._first_token = _INF if guard.first_token is None else guard.first_token
        self._idle = _INF if guard.idle is None else guard.idle
        self._total = _INF if guard.total is None else guard.total
        self._parts: list[str] = []
        self._started = False
        self._start_at = 0.0
        self._last = 0.0
        self._total_at = _INF
        self._armed = _INF  # our own deadline for the next chunk
        self._latency: float | None = None
        self._buffered_used = False
        self._validators = guard.validators
        self._max_chunks = guard.max_chunks
        self._max_chars = guard.max_chars
        #: whether each chunk is screened (validators or a cap): one test per chunk if not
        self._screening = (
            bool(self._validators) or self._max_chunks is not None or (self._max_chars is not None)
        )
        self._chars = 0  # characters delivered, counted only while screening
        self.result: StreamResult | None = None
        self._span: OpenSpan | None = None  # with a journal, from the start on
        self._error: BaseException | None = None  # what the span ends with

    @property
    def text(self) -> str:
        """Everything delivered so far (the partial text after an early end)."""
        return "".join(self._parts)

    @property
    def ended(self) -> bool:
        return self.result is not None

    def _begin(self) -> None:
        if self._journal is not None:
            self._span = start_span(f"stream:{self._guard.name}", self._journal)
        self._started = True
        self._start_at = self._last = self._now()
        self._total_at = self._start_at + self._total
        self._armed = min(self._start_at + self._first_token, self._total_at)

    def _first(self, now: float) -> None:
        self._latency = now - self._start_at
        self._record(StreamFirstToken, latency=self._latency)

    def _own(self) -> tuple[str, float, float]:
        """(which, deadline, waiting since) of our deadline for the next chunk."""
        if self._buffered_used:  # one long buffered call: only the total deadline applies
            return "total", self._total_at, self._start_at
        if self._latency is None:
            which, at, since = "first_token", self._start_at + self._first_token, self._start_at
        else:
            which, at, since = "idle", self._last + self._idle, self._last
        if self._total_at < at:
            return "total", self._total_at, self._start_at
        return which, at, since

    def _stall_if_due(self, now: float) -> tuple[str, float] | None:
        which, at, since = self._own()
        return (which, now - since) if now >= at else None

    def _record(self, event: type[Event], **fields: Any) -> None:
        if self._journal is not None:
            opened = self._span
            if opened is not None:
                fields["trace_id"] = opened.span.trace_id
                fields["span_id"] = opened.span.span_id
            self._journal.append(event(time=self._now(), source=self._guard.name, **fields))
            if opened is not None and event not in _NOT_LAST:  # the stream's last event
                opened.end(self._error)

    def _finish(self, reason: str, detail: str = "") -> StreamResult:
        text = self.text
        empty = reason == "complete" and not text.strip()
        if empty:  # ran out without a visible character: not an answer
            reason, detail = "empty", "whitespace only" if text else "no text"
        self.result = StreamResult(
            text,
            reason == "complete",
            reason,
            detail,
            self._buffered_used,
            self._latency,
        )
        if empty:
            self._record(StreamEmpty, partial=text)
        elif reason == "complete" and self._span is not None:  # no event: ends here
            self._span.end()
        return self.result

    def _screen(self, chunk: str) -> tuple[str, str] | None:
        """``(reason, detail)`` if ``chunk`` must not be delivered; None to deliver it.

        Caps first, then each validator in order. A validator's exception other than
        ``ValueError`` propagates (the caller ends the stream as an error)."""
        cap = self._max_chunks
        if cap is not None and len(self._parts) >= cap:
            return "capped", f"max_chunks={cap}"
        cap = self._max_chars
        if cap is not None and self._chars + len(chunk) > cap:
            return "capped", f"max_chars={cap}"
        for validator in self._validators:
            try:
                accepted = validator(chunk)
            except ValueError as exc:
                return "invalid", f"{_name(validator)}: {exc}"
            if not accepted:
                return "invalid", f"{_name(validator)} rejected chunk {len(self._parts) + 1}"
        self._chars += len(chunk)
        return None

    def _refused(self, reason: str, detail: str) -> None:
        """Record the end of a stream whose next chunk :meth:`_screen` refused."""
        if reason == "capped":
            self._record(StreamCapped, limit=detail, partial=self.text)
        else:
            self._record(
                StreamInvalid, chunk=len(self._parts) + 1, detail=detail, partial=self.text
            )

    def _stalled(self, which: str, waited: float) -> StreamStalled | None:
        """Record a stall; the error to raise, or None in ``on_stall="return"`` mode."""
        partial = self.text
        error = StreamStalled(which, waited, partial)
        self._error = self._error or error
        self._record(StallDetected, which=which, waited=waited, partial=partial)
        if self._guard.on_stall == "raise":
            return error
        return None

    def _interrupted(self, reason: str) -> None:
        self._record(StreamCancelled, reason=reason, partial=self.text)

    def _splice(self, answer: str) -> str:
        """What the buffered ``answer`` adds after the partial text; raises if it diverged."""
        partial = self.text
        if not answer.startswith(partial):
            self._interrupted("buffered answer diverged")
            raise StreamInterrupted("buffered answer diverged", partial)
        return answer[len(partial) :]


#: The events a stream records before its last one.
_NOT_LAST: frozenset[type[Event]] = frozenset({StreamFirstToken, FallbackUsed})


def _name(validator: Callable[[str], object]) -> str:
    return str(getattr(validator, "__qualname__", None) or repr(validator))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
