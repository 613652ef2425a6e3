"""The splice decision of one resilient stream: told what happened, it answers what to do.

A streamed answer starts on the daemon and, when the daemon fails before or during it, is
finished in process: the prompt is replayed there, the replay must reproduce the text
already delivered, and only what comes after it is delivered (the package docs say why
replay). :class:`Splice` makes every decision of that for one stream and does nothing
else: it opens, reads, closes, waits for and journals nothing, so that the sync
:class:`~.streams.ResilientStream` and the async :class:`~.astream.AsyncResilientStream`
share one decision and differ only in how they wait. A stream tells it what happened and
acts on the answer::

    the breaker admits the daemon       on_admitted()
    the breaker refuses it              on_refused(exc)          -> Switch
    the source produces a chunk         on_chunk(text)           -> Deliver | Pull | GiveUp
    the source ends                     on_end(result)           -> Finish | Switch | GiveUp
    the source raises an Exception      on_error(exc, cancelled) -> Switch | GiveUp | Stop
    the source is closed after GiveUp   on_given_up(step)
    a chunk reaches the consumer        on_delivered(text)
    the stream is closed early          on_closed()

An interrupt that is no ``Exception`` (``Cancelled``, ``HangDetected``, the task's
cancellation) is never a decision: the stream closes and lets it through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ...core.errors import StreamInterrupted
from .policy import exhaustion, falls_back

if TYPE_CHECKING:
    from ...core.stream import StreamResult
    from .policy import Policy

__all__ = ["Deliver", "Finish", "GiveUp", "Pull", "Splice", "Stop", "Switch"]

Source = Literal["daemon", "direct"]


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand ``text`` to the consumer. ``answered``: it is the daemon's first chunk, so first
    settle the daemon's breaker permit as a success and journal its latency (``DaemonSlow``,
    ``DaemonUp``)."""

    text: str
    answered: bool = False


@dataclass(frozen=True, slots=True)
class Pull:
    """Read the next chunk: the last one added nothing (in process, it only reproduced
    text already delivered, or was empty)."""


@dataclass(frozen=True, slots=True)
class Switch:
    """Leave the daemon, which failed with ``error``, for the in-process backend.

    First count ``error`` against the breaker as ``breaker`` says: ``"settle"`` the permit
    still held; ``"late"``: the daemon failed after its first chunk had settled the permit,
    so take a new one to count it (if the breaker gives one); None: the breaker refused
    the daemon, nothing to count. Then journal ``DaemonDown`` (once per outage, for an
    outage) and ``FallbackUsed``, and stream ``prompt`` in process: its first ``offset``
    characters must reproduce the text already delivered and are not delivered again.
    """

    error: Exception
    breaker: Literal["settle", "late"] | None
    prompt: str
    offset: int


@dataclass(frozen=True, slots=True)
class Finish:
    """The answer ran to its end. ``answered``: the daemon's answer was empty, so first
    settle its permit as a success and journal its latency, as :class:`Deliver` does."""

    answered: bool = False


@dataclass(frozen=True, slots=True)
class GiveUp:
    """End the stream early, in this order: journal ``StreamCancelled(reason="fallback
    diverged", partial=diverged)`` if ``diverged`` is set; close the source (a permit still
    held counts as neither success nor failure); journal ``FallbackExhausted(failures=
    exhausted)`` if ``exhausted`` is set; tell the splice (``on_given_up``), which keeps
    ``error``. Then raise ``error`` if ``raises`` (from ``cause`` when ``error`` is a
    ``FallbackError`` wrapping it); otherwise the stream just ends.
    """

    error: Exception
    cause: Exception
    raises: bool
    diverged: str | None = None
    exhausted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Stop:
    """The caller cancelled the stream: close the source and let the error through as it
    is (the caller's decision: never a fallback, and the breaker counts nothing)."""


class Splice:
    """The decisions of one resilient stream (see the module docs).

    ``prompt``: what the stream answers, replayed in process after a switch. ``policy``:
    the client's (``"never_fail"``: a failure once the stream has started ends it quietly,
    ``error`` set). ``chain``: the name a ``FallbackError`` carries (the client's).

    The stream's state, which the streams show: ``text`` (delivered so far), ``source``
    (``"daemon"``, then ``"direct"`` after a switch), ``fell_back``, ``complete`` (the
    answer ran to its end), ``ended`` (nothing more will be read), ``error`` (what ended it
    early), ``daemon_error`` (why the daemon was left), ``served_after`` (the failure
    after which a cached or static answer finished the stream).
    """

    def __init__(self, prompt: str, policy: Policy, chain: str) -> None:
        self.prompt = prompt
        self.policy: Policy = policy
        self.chain = chain
        self._parts: list[str] = []
        self._awaiting = False  # the daemon's breaker permit is held until its first chunk
        self._replay = ""  # delivered text the in-process replay must reproduce first
        self._matched = 0
        self.source: Source = "daemon"
        self.fell_back = False
        self.complete = False
        self.ended = False
        self.error: BaseException | None = None
        self.daemon_error: Exception | None = None
        self.served_after: Exception | None = None  # the last failure a last resort answered

    @property
    def text(self) -> str:
        """Everything delivered so far."""
        return "".join(self._parts)

    # -------------------------------------------------------------------- what happened

    def on_admitted(self) -> None:
        """The breaker admitted the daemon: its permit is held until the first chunk."""
        self._awaiting = True

    def on_refused(self, error: Exception) -> Switch:
        """The breaker refused the daemon (``CircuitOpenError``): go in process at once."""
        return self._switch(error, None)

    def on_chunk(self, text: str) -> Deliver | Pull | GiveUp:
        """The current source produced ``text``.

        The daemon's chunks are delivered as they come. In process, the replayed prefix is
        checked against the delivered text and skipped; a chunk that contradicts it ends
        the stream (``"fallback diverged"``); an empty chunk is not delivered.
        """
        if self.source == "daemon":
            answered, self._awaiting = self._awaiting, False
            return Deliver(text, answered)
        want = len(self._replay) - self._matched
        if want > 0:
            n = min(want, len(text))
            if text[:n] != self._replay[self._matched : self._matched + n]:
                return self._diverged()
            self._matched += n
            text = text[n:]
        return Deliver(text) if text else Pull()

    def on_end(self, result: StreamResult | None) -> Finish | Switch | GiveUp:
        """The current source ended; ``result`` is how its guard saw the end."""
        if self.source == "daemon" and result is not None and not result.complete:
            # a guard with on_stall="return": a stall is still the daemon failing; so is an
            # answer the guard did not accept (empty or whitespace only, capped, invalid)
            return self._daemon_failed(StreamInterrupted(result.reason, result.text))
        if self.source == "direct" and self._matched < len(self._replay):
            return self._diverged()  # the replay ended before it reproduced the delivered text
        # no guard: an empty answer from the daemon still ends the stream
        answered, self._awaiting = self._awaiting, False
        self.complete = True
        self.ended = True
        return Finish(answered)

    def on_error(self, exc: Exception, *, cancelled: bool) -> Switch | GiveUp | Stop:
        """The current source raised ``exc``; ``cancelled``: its guard says the stream was
        cancelled (a cancellation that reached the stream as an ``Exception``)."""
        if cancelled:
            return Stop()
        if self.source == "daemon" and falls_back(exc):
            return self._daemon_failed(exc)
        return self._give_up(exc)

    def on_given_up(self, step: GiveUp) -> None:
        """The source is closed after ``step``: the stream keeps its ``error``, raised or
        not."""
        self.error = step.error

    def on_served(self, step: GiveUp) -> None:
        """Both sides failed (``step``), and the client's last resort (its cached or static
        answer, which begins with the text delivered) finishes the answer instead: the
        stream is complete, with no error."""
        self.ended = self.complete = True
        self.served_after = step.cause

    def on_delivered(self, text: str) -> None:
        """``text`` reached the consumer."""
        self._parts.append(text)

    def on_closed(self) -> None:
        """The stream was closed early (by the consumer, or on an interrupt): it has ended,
        and a permit still held is given back uncounted."""
        self.ended = True
        self._awaiting = False

    # -------------------------------------------------------------------------- answers

    def _daemon_failed(self, exc: Exception) -> Switch:
        # a failure after the first chunk counts against the breaker too
        return self._switch(exc, "settle" if self._awaiting else "late")

    def _switch(self, error: Exception, breaker: Literal["settle", "late"] | None) -> Switch:
        self._awaiting = False
        self.daemon_error = error
        self.source = "direct"
        self.fell_back = True
        self._replay, self._matched = self.text, 0
        return Switch(error, breaker, self.prompt, len(self._replay))

    def _diverged(self) -> GiveUp:
        text = self.text
        return self._give_up(StreamInterrupted("fallback diverged", text), diverged=text)

    def _give_up(self, exc: Exception, *, diverged: str | None = None) -> GiveUp:
        """End with ``exc``: wrapped in a ``FallbackError`` when the in-process side failed
        too; raised unless the policy is ``"never_fail"`` and ``exc`` is a failure."""
        self.ended = True
        self._awaiting = False
        error: Exception = exc
        exhausted: tuple[str, ...] = ()
        if self.source == "direct" and falls_back(exc) and not isinstance(exc, StreamInterrupted):
            assert self.daemon_error is not None
            error, exhausted = exhaustion(self.chain, self.daemon_error, exc)
        raises = self.policy == "raise" or not falls_back(exc)
        return GiveUp(error, exc, raises, diverged, exhausted)

    def __repr__(self) -> str:
        state = "complete" if self.complete else ("ended" if self.ended else "open")
        return f"<Splice {self.source} {state} chars={len(self.text)}>"
