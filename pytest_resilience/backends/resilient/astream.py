"""The resilient client's async stream: the async driver of the stream's splice.

It reads the daemon's ``astream`` under the guard's ``awrap`` (then the in-process
backend, iterated in worker threads), tells the :class:`~.splice.Splice` what happened, and
does what it answers, as the sync :class:`~.streams.ResilientStream` does; the two differ
only in how they wait, and in ``aclose()`` being callable from another task mid-read. Its
span (with a journal) is the sync stream's: current around each ``__anext__`` and
``aclose()``, in the task that awaits them, and ended once when the stream ends.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Self

from .inthread import InThread
from .splice import Deliver, GiveUp, Stop, Switch
from .streams import SplicedStream, cancelled

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from types import TracebackType

    from ...core.stream import AsyncGuardedStream
    from ..base import GenerationParams
    from .client import ResilientClient

__all__ = ["AsyncResilientStream"]


class AsyncResilientStream(SplicedStream):
    """The async :class:`ResilientStream`: ``async for`` over it; ``aclose()`` (or ``async
    with``) stops it early. Same attributes, same switch to the direct backend, which runs in
    worker threads (one ``next()`` per chunk) and is closed, its thread idle, when the stream
    ends however it ends.
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
        self._inner: AsyncGuardedStream | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        opened = self._span
        if opened is None:  # no journal, or the stream has ended
            return await self._anext()
        token = opened.activate()
        try:
            chunk = await self._anext()
        except BaseException as exc:  # StopAsyncIteration too: the stream has ended
            opened.deactivate(token)
            self._end_span(None if isinstance(exc, StopAsyncIteration) else exc)
            raise
        opened.deactivate(token)
        if self._over():  # the last chunk: a last resort finished the answer
            self._end_span()
        return chunk

    async def _anext(self) -> str:
        chunk, self._ahead = self._ahead, None
        if chunk is None:
            chunk = await self._pull()
            if chunk is None:
                raise StopAsyncIteration
        self._splice.on_delivered(chunk)
        return chunk

    # ------------------------------------------------------------------------- sources

    async def _daemon_chunks(self) -> AsyncIterator[str]:
        # Opened at the first anext, inside the guard's scope (as the sync path does).
        stream = self._client.daemon.astream(self._prompt, self._params)
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()

    def _open_direct(self, prompt: str) -> Iterable[str]:
        return self._client.load_direct().stream(prompt, self._params)

    async def _prime(self) -> None:
        switch = self._admit()
        if switch is None:
            self._inner = self._client.guard.awrap(self._daemon_chunks())
        else:
            self._switch(switch)
        self._ahead = await self._pull()

    def _switch(self, step: Switch) -> None:
        """Go on in process, replaying what the daemon delivered (see the package docs)."""
        client = self._client
        self._leave_daemon(step)
        opener = functools.partial(self._open_direct, step.prompt)
        self._inner = client.guard.awrap(InThread(opener, client.clock, f"{client.name} direct"))

    # ------------------------------------------------------------------------ iteration

    async def _pull(self) -> str | None:
        """The next new chunk (None at the end), switching to in-process if the daemon fails."""
        splice = self._splice
        while not splice.ended:
            inner = self._inner
            assert inner is not None
            try:
                chunk = await anext(inner)
            except StopAsyncIteration:
                if self._inner is not inner:  # aclose() from another task while we waited
                    return None
                end = splice.on_end(inner.result)
                if isinstance(end, Switch):
                    self._switch(end)
                    continue
                if isinstance(end, GiveUp):
                    # raises, or (never_fail) the stream has ended, or a last resort ends it
                    return await self._give_up(end) or None
                if end.answered:
                    self._answered()
                self._finished(inner.result)
                return None
            except Exception as exc:
                if self._inner is not inner:  # aclose() from another task while we waited
                    return None
                failed = splice.on_error(exc, cancelled=cancelled(inner))
                if isinstance(failed, Stop):  # the caller's decision: never a fallback
                    await self._astop()
                    raise
                if isinstance(failed, Switch):
                    self._switch(failed)
                    continue
                rest = await self._give_up(failed)
                if rest:
                    return rest
                continue
            except BaseException:  # the task's cancellation, HangDetected: the guard closed
                splice.on_closed()  # inner; no fallback, and the permit counts as neither
                self._release_permit()
                raise
            step = splice.on_chunk(chunk)
            if isinstance(step, Deliver):
                if step.answered:
                    self._answered()
                return step.text
            if isinstance(step, GiveUp):
                rest = await self._give_up(step)  # raises, or (never_fail) the stream has ended
                if rest:
                    return rest
        return None

    # --------------------------------------------------------------------------- ending

    async def _give_up(self, step: GiveUp) -> str | None:
        """End as ``step`` says, unless a last resort finishes the answer: then the text it
        still has to deliver."""
        self._before_close(step)
        await self._close_inner()
        rest = self._rescued(step)
        if rest is None:
            self._after_close(step)
        return rest

    async def _close_inner(self) -> None:
        inner, self._inner = self._inner, None
        try:
            if inner is not None:
                await inner.aclose()
        finally:
            self._release_permit()

    async def aclose(self) -> None:
        """Stop the answer early and close its source (joining an in-process step still
        running in its worker thread); its span ends. Idempotent."""
        opened = self._span
        if opened is None:
            await self._astop()
            return
        token = opened.activate()
        try:
            await self._astop()
        except BaseException as exc:
            opened.deactivate(token)
            self._end_span(exc)
            raise
        opened.deactivate(token)
        self._end_span()

    async def _astop(self) -> None:
        self._splice.on_closed()
        await self._close_inner()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncResilientStream {self._state()}>"
