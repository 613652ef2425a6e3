"""The resilient client's sync stream, and what it shares with the async one.

:class:`SplicedStream` holds one stream's :class:`~.splice.Splice` and does the bookkeeping
its answers ask for, none of which waits: the daemon's breaker permit, and the client's
journal. :class:`ResilientStream` is the sync driver on top: it reads the guarded daemon
stream (then the in-process one), tells the splice what happened, and does what it answers.

With a journal, a stream is one span of the client's (``<name>.stream``), opened when the
client makes the stream and current around every step that can record: making it (up to the
first chunk), each read (and the switch in process it may make), and closing it. So the
client's events of a whole stream (``FallbackUsed``, ``DaemonDown``, a breaker's
transition, the cache's) carry its ids, and the guard's ``stream:`` spans are its children.
It ends once, when the stream does: exhausted, its last chunk handed out, failed (ending
with the error raised), or closed. A stream dropped without being closed ends no span: a
finaliser must not take the locks an exporter's ``span_ended`` may take, so nothing is
announced, as for the guard's own streams.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self, TypeVar

from ...core.errors import CircuitOpenError
from ...core.events import StreamCancelled
from ...core.fallback import FallbackExhausted
from .splice import Deliver, GiveUp, Splice, Stop, Switch

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from ...core.breaker import Permit
    from ...core.stream import AsyncGuardedStream, GuardedStream
    from ...core.stream_base import StreamResult
    from ...core.trace import OpenSpan
    from ..base import GenerationParams
    from .client import ResilientClient

__all__ = ["ResilientStream", "SplicedStream", "cancelled"]

S = TypeVar("S", bound="SplicedStream")


def cancelled(inner: GuardedStream | AsyncGuardedStream) -> bool:
    """Whether a guarded stream ended because it was cancelled, though it raised an
    ``Exception`` (the guard's own ``cancel()`` ends it with ``StreamInterrupted``; a scope
    around it, with the ``Cancelled`` itself, which no ``except Exception`` sees)."""
    result = inner.result
    return result is not None and result.reason == "cancelled"


class SplicedStream:
    """What both resilient streams share: the splice, the state it shows (``text``,
    ``source``, ``fell_back``, ``complete``, ``error``), and the bookkeeping its answers
    ask for (the breaker's permit, the journal), none of which waits."""

    def __init__(
        self,
        client: ResilientClient,
        prompt: str,
        params: GenerationParams,
        *,
        key: str | None = None,
    ) -> None:
        self._client = client
        self._prompt = prompt
        self._params = params
        # the request's key in the client's cache ("": no cache); a degraded stream's is
        # its request's, not that of the parameters it was lowered to
        self._key = client._key(prompt, params) if key is None else key
        self._splice = Splice(prompt, client.policy, client.name)
        self._permit: Permit | None = None
        self._started_at = 0.0
        self._ahead: str | None = None  # the chunk read before the client returned the stream
        self._span: OpenSpan | None = None  # the client's span of the stream, until it ends

    @property
    def text(self) -> str:
        """Everything delivered so far."""
        return self._splice.text

    @property
    def source(self) -> str:
        """Where the answer comes from now: ``"daemon"`` or ``"direct"``."""
        return self._splice.source

    @property
    def fell_back(self) -> bool:
        """Whether the answer switched to the direct backend."""
        return self._splice.fell_back

    @property
    def complete(self) -> bool:
        """Whether the answer ran to its end."""
        return self._splice.complete

    @property
    def error(self) -> BaseException | None:
        """What ended the answer early (raised too, unless the policy is ``"never_fail"``)."""
        return self._splice.error

    # --------------------------------------------------------------------------- span

    def _over(self) -> bool:
        """Whether the stream has nothing more to give: ended, its last chunk handed out."""
        return self._splice.ended and self._ahead is None

    def _carry(self: S, opened: OpenSpan) -> S:
        """Take the client's span ``opened``, in which the stream was made: the stream ends
        it when it ends, or now if it already has."""
        if self._over():
            opened.end()
        else:
            self._span = opened
        return self

    def _end_span(self, error: BaseException | None = None) -> None:
        """End the stream's span (once), by ``error`` if the stream raised it."""
        opened, self._span = self._span, None
        if opened is not None:
            opened.end(error)

    # ---------------------------------------------------------------------- bookkeeping

    def _admit(self) -> Switch | None:
        """Ask the breaker for the daemon: None if admitted (open the daemon's stream),
        else the switch in process."""
        client = self._client
        self._started_at = client.clock.now()
        try:
            self._permit = client.breaker.acquire()
        except CircuitOpenError as exc:
            return self._splice.on_refused(exc)
        self._splice.on_admitted()
        return None

    def _answered(self) -> None:
        """The daemon's first chunk (or its empty end): its latency, and the breaker's
        outcome so far."""
        permit, self._permit = self._permit, None
        assert permit is not None
        permit.success()
        self._client._answered(self._client.clock.now() - self._started_at)

    def _leave_daemon(self, step: Switch) -> None:
        """Count the daemon's failure against the breaker, and journal it, as ``step`` says."""
        client = self._client
        permit, self._permit = self._permit, None
        if step.breaker == "settle":
            assert permit is not None
            permit.settle(step.error)
        elif step.breaker == "late":
            try:
                with client.breaker.acquire() as late:
                    late.settle(step.error)
            except CircuitOpenError:
                pass
        client._failed(step.error)
        client._fell_back(step.error)

    def _finished(self, result: StreamResult | None) -> None:
        """The answer ran to its end: store it in the client's cache if it is whole and
        valid (its guard saw it complete: not stalled, capped, invalid or empty) and has
        visible text."""
        text = self._splice.text
        if self._key and (result is None or result.complete) and text.strip():
            self._client._stored(self._key, text)

    def _rescued(self, step: GiveUp) -> str | None:
        """Both sides failed (``step.exhausted``; the source is closed): what the client's
        last resort still has to deliver (the rest of its cached answer, else of its static
        one, if that begins with the text delivered), the stream then complete; None: no
        last resort, ``step`` goes on."""
        if not step.exhausted:
            return None
        client, splice = self._client, self._splice
        rest = client._last_resort(self._key, step.exhausted, splice.text)
        if rest is not None:
            splice.on_served(step)
        return rest

    def _before_close(self, step: GiveUp) -> None:
        if step.diverged is not None:
            self._client._record(StreamCancelled, reason="fallback diverged", partial=step.diverged)

    def _after_close(self, step: GiveUp) -> None:
        """Journal both sides failing, then raise as ``step`` says (or, never_fail, stop)."""
        if step.exhausted:
            self._client._record(FallbackExhausted, failures=step.exhausted)
        self._splice.on_given_up(step)
        if not step.raises:
            return
        if step.error is step.cause:
            raise step.cause
        raise step.error from step.cause

    def _release_permit(self) -> None:
        permit, self._permit = self._permit, None
        if permit is not None:
            permit.ignore()  # stopped by the consumer: neither a success nor a failure

    def _state(self) -> str:
        """``source state chars=N``, for the streams' ``repr``."""
        splice = self._splice
        state = "complete" if splice.complete else ("ended" if splice.ended else "open")
        return f"{splice.source} {state} chars={len(splice.text)}"


class ResilientStream(SplicedStream):
    """One streamed answer: from the daemon, finished in process if the daemon fails.

    Iterate it for text chunks; ``close()`` (or ``with``) stops it early and closes the
    source. ``text`` is what has been delivered; ``source`` is ``"daemon"`` or
    ``"direct"``; ``fell_back`` says whether the answer switched; ``complete`` is True once
    the answer ran to its end; ``error`` holds what ended it early under ``"never_fail"``.
    """

    def __init__(
        self,
        client: ResilientClient,
        prompt: str,
        params: GenerationParams,
        *,
        key: str | None = None,
    ) -> None:
        super().__init__(client, prompt, params, key=key)
        self._inner: GuardedStream | None = None

    def __iter__(self) -> Self:
        return self

    # ------------------------------------------------------------------------- sources

    def _daemon_chunks(self) -> Iterator[str]:
        # Opened inside the guard's scope, so the daemon backend's read timeout follows the
        # guard's first-token deadline.
        stream = self._client.daemon.stream(self._prompt, self._params)
        try:
            yield from stream
        finally:
            stream.close()

    def _direct_chunks(self, prompt: str) -> Iterator[str]:
        stream = self._client.load_direct().stream(prompt, self._params)
        try:
            yield from stream
        finally:
            stream.close()

    def _prime(self) -> None:
        switch = self._admit()
        if switch is None:
            self._inner = self._client.guard.wrap(self._daemon_chunks())
        else:
            self._switch(switch)
        try:
            self._ahead = self._pull()
        except StopIteration:
            self._ahead = None

    def _switch(self, step: Switch) -> None:
        """Go on in process, replaying what the daemon delivered (see the package docs)."""
        self._leave_daemon(step)
        self._inner = self._client.guard.wrap(self._direct_chunks(step.prompt))

    # ------------------------------------------------------------------------ iteration

    def __next__(self) -> str:
        opened = self._span
        if opened is None:  # no journal, or the stream has ended
            return self._next()
        token = opened.activate()
        try:
            chunk = self._next()
        except BaseException as exc:  # StopIteration too: the stream has ended
            opened.deactivate(token)
            self._end_span(None if isinstance(exc, StopIteration) else exc)
            raise
        opened.deactivate(token)
        if self._over():  # the last chunk: a last resort finished the answer
            self._end_span()
        return chunk

    def _next(self) -> str:
        chunk, self._ahead = self._ahead, None
        if chunk is None:
            chunk = self._pull()
        self._splice.on_delivered(chunk)
        return chunk

    def _pull(self) -> str:
        """The next new chunk, switching to the direct backend if the daemon fails."""
        splice = self._splice
        while not splice.ended:
            inner = self._inner
            assert inner is not None
            try:
                chunk = next(inner)
            except StopIteration:
                end = splice.on_end(inner.result)
                if isinstance(end, Switch):
                    self._switch(end)
                    continue
                if isinstance(end, GiveUp):
                    rest = self._give_up(end)  # raises, or (never_fail) the stream has ended
                    if rest:  # ... or the last resort finishes it
                        return rest
                else:
                    if end.answered:
                        self._answered()
                    self._finished(inner.result)
                raise
            except Exception as exc:
                failed = splice.on_error(exc, cancelled=cancelled(inner))
                if isinstance(failed, Stop):  # the caller's decision: never a fallback
                    self._stop()
                    raise
                if isinstance(failed, Switch):
                    self._switch(failed)
                    continue
                rest = self._give_up(failed)
                if rest:
                    return rest
                continue
            except BaseException:  # HangDetected, ^C: no fallback; the guard closed inner
                self._stop()  # gives the breaker's permit back, counted as neither
                raise
            step = splice.on_chunk(chunk)
            if isinstance(step, Deliver):
                if step.answered:
                    self._answered()
                return step.text
            if isinstance(step, GiveUp):
                rest = self._give_up(step)  # raises, or (never_fail) the stream has ended
                if rest:
                    return rest
        raise StopIteration

    # --------------------------------------------------------------------------- ending

    def _give_up(self, step: GiveUp) -> str | None:
        """End as ``step`` says, unless a last resort finishes the answer: then the text it
        still has to deliver."""
        self._before_close(step)
        self._close_inner()
        rest = self._rescued(step)
        if rest is None:
            self._after_close(step)
        return rest

    def _close_inner(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()
        self._release_permit()

    def close(self) -> None:
        """Stop the answer early and close its source; its span ends. Idempotent."""
        opened = self._span
        if opened is None:
            self._stop()
            return
        token = opened.activate()
        try:
            self._stop()
        except BaseException as exc:
            opened.deactivate(token)
            self._end_span(exc)
            raise
        opened.deactivate(token)
        self._end_span()

    def _stop(self) -> None:
        self._splice.on_closed()
        self._close_inner()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ResilientStream {self._state()}>"
