"""The async guarded stream: what :meth:`StreamGuard.awrap` returns.

Each ``__anext__`` runs in an ``async with CancelScope(deadline=...)``, so a source that
waits too long is cancelled at the deadline. The rules are in
:mod:`pytest_resilience.core.stream`, and they are the sync stream's: a buffered call past
the total deadline is a ``total`` stall, and a scope around the guard that is cancelled or
expires while the source waits (it cancels the task, and turns that into its ``Cancelled``
or ``DeadlineExceeded`` as it ends) is recorded with its reason; only a task cancelled from
outside records ``"task cancelled"``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NoReturn, Self

from .cancel import CancelScope, current_scope
from .errors import Cancelled, DeadlineExceeded, StreamInterrupted
from .events import FallbackUsed
from .stream_base import _INF, _describe, _Guarded

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

    from .stream import StreamGuard

__all__ = ["AsyncGuardedStream"]


class AsyncGuardedStream(_Guarded):
    """One guarded async stream: ``async for`` over it, ``aclose()``, ``async with``.

    Each ``__anext__`` runs in an ``async with CancelScope(deadline=...)``: the scope's timer
    cancels a source that waits too long, and code in the source sees the scope.
    """

    def __init__(
        self,
        guard: StreamGuard,
        source: AsyncIterable[str],
        *,
        buffered: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        super().__init__(guard)
        self._source = source
        self._ait: AsyncIterator[str] = aiter(source)
        self._buffered = buffered
        self._scope: CancelScope | None = None
        self._cancel_reason: str | None = None
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        if self.result is not None:
            raise StopAsyncIteration
        if not self._started:
            self._begin()
        try:
            if self._cancel_reason is not None:
                raise Cancelled(self._cancel_reason)
            armed = self._armed if self._armed < _INF else None
            async with CancelScope(
                deadline=armed, clock=self._clock, name=f"stream {self._guard.name!r}"
            ) as scope:
                self._scope = scope
                opened = self._span
                if opened is None:
                    chunk = await self._ait.__anext__()
                else:  # with a journal: the source runs in the stream's span
                    token = opened.activate()
                    try:
                        chunk = await self._ait.__anext__()
                    finally:
                        opened.deactivate(token)
        except StopAsyncIteration:
            await self._aend("complete")
            raise
        except TimeoutError as exc:
            await self._atimeout(exc)
        except Cancelled as exc:
            await self._aend("cancelled", exc.reason)
            self._interrupted(f"cancelled: {exc.reason}")
            if self._cancel_reason is None:  # a scope around the guard: the caller's, as it is
                raise
            raise StreamInterrupted(f"cancelled: {exc.reason}", self.text) from exc
        except asyncio.CancelledError:  # the task was cancelled: close, record, re-raise as is
            await self._acancelled()
            raise
        except MemoryError as exc:
            if self._buffered is None or self._buffered_used:
                await self._afail(exc)
                raise
            return await self._switch_to_buffered(exc)
        except BaseException as exc:  # HangDetected too: the source is closed, then re-raised
            await self._afail(exc)
            raise
        finally:
            self._scope = None
        return await self._deliver(chunk)

    async def _deliver(self, chunk: str) -> str:
        """The source produced ``chunk``: deliver it, or end the stream (late, refused)."""
        now = self._now()
        if now > self._armed:  # a source that moved the clock without checking the scope
            await self._astall(*(self._stall_if_due(now) or ("idle", now - self._last)))
        if self._screening:
            await self._acheck(chunk)
        if self._latency is None:
            self._first(now)
        self._parts.append(chunk)
        self._last = now
        self._armed = min(now + self._idle, self._total_at)
        return chunk

    async def _acheck(self, chunk: str) -> None:
        """Screen ``chunk`` (validators, caps): return to deliver it, else end the stream."""
        try:
            refused = self._screen(chunk)
        except BaseException as exc:  # a validator that broke: recorded, then re-raised
            await self._afail(exc)
            raise
        if refused is not None:
            await self._aend(*refused)
            self._refused(*refused)
            raise StopAsyncIteration

    async def _atimeout(self, exc: TimeoutError) -> NoReturn:
        """A deadline passed: a stall if it is ours, else an error; both raise ``exc`` on."""
        due = self._stall_if_due(self._now())
        if due is None:  # a deadline around the guard, or inside the source: not ours
            await self._afail(exc)
            raise exc
        await self._astall(*due, cause=exc)

    async def _acancelled(self) -> None:
        """The task was cancelled while the source (or buffered call) waited: record why.

        A scope around the guard that was cancelled or has expired cancelled the task, and
        turns that into its ``Cancelled`` or ``DeadlineExceeded`` as it ends: recorded as the
        sync stream records them. Otherwise the task was cancelled from outside.
        """
        try:
            around = current_scope()  # the guard's own scope has been left: the caller's
            if around is not None:
                around.check()
        except Cancelled as exc:
            await self._aend("cancelled", exc.reason)
            self._interrupted(f"cancelled: {exc.reason}")
            return
        except DeadlineExceeded as exc:
            await self._afail(exc)
            return
        await self._aend("cancelled", "task cancelled")
        self._interrupted("cancelled: task cancelled")

    async def _astall(
        self, which: str, waited: float, cause: BaseException | None = None
    ) -> NoReturn:
        await self._aend(which)
        error = self._stalled(which, waited)
        if error is not None:
            raise error from cause
        raise StopAsyncIteration

    async def _switch_to_buffered(self, exc: MemoryError) -> str:
        assert self._buffered is not None
        await self._aclose_source()
        self._buffered_used = True
        self._record(FallbackUsed, step="buffered", index=1, after=(_describe(exc),))
        try:
            total = self._total_at if self._total_at < _INF else None
            async with CancelScope(deadline=total, clock=self._clock, name="buffered"):
                answer = await self._buffered()
            rest = self._splice(answer)
        except StreamInterrupted:
            self._finish("error", "buffered answer diverged")
            raise
        except TimeoutError as error:  # past the total deadline: a stall, as in the sync stream
            await self._atimeout(error)
        except asyncio.CancelledError:
            await self._acancelled()
            raise
        except BaseException as error:  # not swallowed: recorded, then re-raised
            self._finish("error", _describe(error))
            self._interrupted(f"error: {_describe(error)}")
            raise
        if rest and self._screening:
            try:
                refused = self._screen(rest)  # the source is closed already
            except BaseException as error:  # a validator that broke: recorded, then re-raised
                self._finish("error", _describe(error))
                self._interrupted(f"error: {_describe(error)}")
                raise
            if refused is not None:
                self._finish(*refused)
                self._refused(*refused)
                raise StopAsyncIteration
        self._parts.append(rest)
        self._finish("complete")
        if rest:
            return rest
        raise StopAsyncIteration

    async def _afail(self, exc: BaseException) -> None:
        self._error = self._error or exc
        await self._aend("error", _describe(exc))
        self._interrupted(f"error: {_describe(exc)}")

    async def _aend(self, reason: str, detail: str = "") -> None:
        if self.result is None:
            self._finish(reason, detail)
            await self._aclose_source()

    async def _aclose_source(self) -> None:
        if self._closed:
            return
        self._closed = True
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()

    async def aclose(self) -> None:
        """Stop the stream early and close the source; idempotent. Records ``closed``."""
        if self.result is None:
            await self._aend("closed")
            self._interrupted("closed")

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel the stream: a wait in progress ends now, the next one raises."""
        self._cancel_reason = reason
        scope = self._scope
        if scope is not None:
            scope.cancel(reason)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = self.result.reason if self.result is not None else "open"
        return f"<AsyncGuardedStream {self._guard.name!r} {state} chars={len(self.text)}>"
