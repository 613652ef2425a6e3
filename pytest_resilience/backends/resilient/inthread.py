"""A blocking text stream as an async iterator, one worker-thread call per chunk.

The async resilient stream finishes an answer in process through it: llama.cpp blocks, so
each of its steps runs in a worker thread, and closing waits for a step still running
rather than leave a thread inside the source.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from typing import TYPE_CHECKING, Self

from ...core.cancel import CancelScope
from ...core.errors import Cancelled

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from ...core.clock import Clock

__all__ = ["InThread"]


class InThread:
    """A blocking text stream as an async iterator: each ``next()`` runs in a worker thread.

    The stream is opened (``open_()``, which may load a model) in the first step, in the
    context of the code that built this object, inside a scope of our own: a backend that
    captures the current scope when it starts (the llama backend) sees the caller's scopes
    and our stop flag, not the guard's per-chunk deadline scope, which ends after one chunk.
    Each step runs in a copy of the awaiting task's context, so the guard's deadline reaches
    sources that check the current scope, inside a child scope that ``aclose()`` can cancel.

    ``aclose()`` cancels both scopes, waits for a step still running (a cooperative source
    stops at its next check), then closes the stream: no thread is left generating.
    """

    def __init__(self, open_: Callable[[], Iterable[str]], clock: Clock, name: str) -> None:
        self._open = open_
        self._ctx = contextvars.copy_context()
        self._stop = CancelScope(None, clock=clock, name=name)
        self._entered = False  # _stop, entered in _ctx by the first step
        self._it: Iterator[str] | None = None
        self._step_scope: CancelScope | None = None
        self._pending: asyncio.Future[str | None] | None = None
        self._closing = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        if self._closing:
            raise StopAsyncIteration
        pending = self._pending  # a step left running by a cancelled anext: its chunk is next
        if pending is None:
            step = functools.partial(contextvars.copy_context().run, self._step)
            pending = self._pending = asyncio.get_running_loop().run_in_executor(None, step)
        # shield: if this task is cancelled (the guard's deadline), the step runs on and
        # aclose() waits for it rather than leave a thread inside the source
        try:
            chunk = await asyncio.shield(pending)
        except asyncio.CancelledError:
            raise  # this task was cancelled, not the step: its chunk is next
        except Cancelled:
            self._pending = None
            if self._closing:  # aclose() stopped the step: the stream ends, nobody cancelled
                raise StopAsyncIteration from None
            raise
        except BaseException:  # the step failed (HangDetected too): it is over
            self._pending = None
            raise
        self._pending = None
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def _step(self) -> str | None:
        """In a worker thread: the next chunk, or None at the end."""
        with CancelScope(None, name=self._stop.name) as scope:
            self._step_scope = scope
            if self._closing:  # aclose() ran before this step began
                scope.cancel("stream closed")
            if self._it is None:
                if not self._entered:
                    self._ctx.run(self._stop.__enter__)
                    self._entered = True
                self._it = iter(self._ctx.run(self._open))
            return next(self._it, None)

    async def aclose(self) -> None:
        """Stop the source, wait for a step still running, close it. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._stop.cancel("stream closed")
        step = self._step_scope
        if step is not None:
            step.cancel("stream closed")
        pending = self._pending
        if pending is None or pending.done():
            self._close_source(pending)
            return
        # if this wait is cancelled, the source is closed when the step ends
        pending.add_done_callback(self._close_source)
        await asyncio.wait([pending])

    def _close_source(self, pending: asyncio.Future[str | None] | None) -> None:
        if pending is not None and not pending.cancelled():
            pending.exception()  # retrieved: the stream is ending anyway
        it, self._it = self._it, None
        try:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        finally:
            if self._entered:  # even if opening failed: leave the caller's scope tree clean
                self._entered = False
                self._ctx.run(self._stop.__exit__, None, None, None)
