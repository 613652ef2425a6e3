"""The sync guarded stream, and the worker thread that pulls a source that cannot cooperate.

:class:`GuardedStream` is what :meth:`StreamGuard.wrap` returns: it iterates the source in
the caller's thread inside a cancel scope whose deadline moves after every chunk, or, with
``threaded=True``, takes the chunks from a :class:`_Pump` thread, so that it can give up at
the deadline on a source blocked for good. The rules are in
:mod:`pytest_resilience.core.stream`.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import types
from collections import deque
from typing import TYPE_CHECKING, NoReturn, Self

from .cancel import CancelScope, current_scope
from .errors import Cancelled, StreamInterrupted
from .events import FallbackUsed
from .stream_base import _INF, _describe, _Guarded

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from collections.abc import Iterator as IteratorT

    from .clock import Clock
    from .stream import StreamGuard

__all__ = ["GuardedStream"]


class GuardedStream(_Guarded):
    """One guarded stream: an iterator of chunks with ``close()``, usable with ``with``.

    ``text`` is what has been delivered; ``result`` is set once the stream has ended;
    ``cancel(reason)`` stops it from any thread.
    """

    def __init__(
        self,
        guard: StreamGuard,
        source: Iterable[str],
        *,
        buffered: Callable[[], str] | None = None,
        threaded: bool = False,
    ) -> None:
        it = iter(source)  # before anything else: a failure here leaves nothing to finalise
        super().__init__(guard)
        self._source = source
        self._it: IteratorT[str] = it
        self._buffered = buffered
        self._threaded = threaded
        self._closed = False
        self._scope = CancelScope(None, clock=guard.clock, name=f"stream {guard.name!r}")
        # no mutate: read only by _arm(), after start() has set it
        self._parent: CancelScope | None = None  # pragma: no mutate
        self._ctx: contextvars.Context | None = None
        self._pull: Callable[[], str] = self._start_and_pull
        self._pump: _Pump | None = None
        self._abandoned: _Pump | None = None  # the worker of an ended threaded stream
        self._cancelled_here = False  # cancel() was called: StreamInterrupted, not Cancelled

    # ----------------------------------------------------------------------- iteration

    def __iter__(self) -> Self:
        return self

    def start(self) -> None:
        """Start the clock (and the worker thread in threaded mode). ``next()`` calls it."""
        if self._started:
            return
        self._begin()
        ctx = self._ctx = contextvars.copy_context()
        self._parent = ctx.run(current_scope)
        ctx.run(self._scope.__enter__)
        if self._span is not None:  # the source (and its worker, buffered()) run in it
            ctx.run(self._span.activate)
        self._arm(self._armed)
        if self._threaded:
            self._pump = _Pump(self._it, self._source, ctx.copy(), self._guard.name)
            self._pull = functools.partial(self._pump.take, self._scope, self._clock)
        else:
            self._pull = functools.partial(ctx.run, next, self._it)

    def _start_and_pull(self) -> str:
        self.start()
        return self._pull()

    def _arm(self, at: float) -> None:
        self._armed = at
        parent = self._parent
        if parent is not None and parent.deadline is not None and parent.deadline < at:
            at = parent.deadline
        self._scope.deadline = at if at < _INF else None

    def __next__(self) -> str:
        if self.result is not None:
            raise StopIteration
        try:
            chunk = self._pull()
        except StopIteration:
            self._end("complete")
            raise
        except TimeoutError as exc:
            self._on_timeout(exc)
        except Cancelled as exc:
            self._end("cancelled", exc.reason)
            self._interrupted(f"cancelled: {exc.reason}")
            if not self._cancelled_here:  # a scope around the guard: the caller's, as it is
                raise
            raise StreamInterrupted(f"cancelled: {exc.reason}", self.text) from exc
        except MemoryError as exc:
            if self._buffered is None or self._buffered_used:
                self._fail(exc)
                raise
            return self._switch_to_buffered(exc)
        except BaseException as exc:  # HangDetected too: the source is closed, then re-raised
            self._fail(exc)
            raise
        now = self._now()
        if now > self._armed or self._scope.cancel_reason is not None:
            return self._late(now)
        if self._screening:
            self._check(chunk)
        if self._latency is None:
            self._first(now)
        self._parts.append(chunk)
        self._last = now
        at = now + self._idle
        self._arm(at if at < self._total_at else self._total_at)
        return chunk

    def _check(self, chunk: str) -> None:
        """Screen ``chunk`` (validators, caps): return to deliver it, else end the stream."""
        try:
            refused = self._screen(chunk)
        except BaseException as exc:  # a validator that broke: recorded, then re-raised
            self._fail(exc)
            raise
        if refused is not None:
            self._end(*refused)
            self._refused(*refused)
            raise StopIteration

    def _late(self, now: float) -> NoReturn:
        """A chunk that came after the deadline, or after a cancellation: not delivered."""
        reason = self._scope.cancel_reason
        if reason is not None:
            self._end("cancelled", reason)
            self._interrupted(f"cancelled: {reason}")
            if not self._cancelled_here:  # a scope around the guard: the caller's Cancelled
                raise Cancelled(reason)
            raise StreamInterrupted(f"cancelled: {reason}", self.text)
        which, waited = self._stall_if_due(now) or ("idle", now - self._last)
        self._end(which)
        error = self._stalled(which, waited)
        if error is not None:
            raise error
        raise StopIteration

    def _on_timeout(self, exc: TimeoutError) -> NoReturn:
        due = self._stall_if_due(self._now())
        if due is None:  # a deadline around the guard, or inside the source: not ours
            self._fail(exc)
            raise exc
        which, waited = due
        self._end(which)
        error = self._stalled(which, waited)
        if error is not None:
            raise error from exc
        raise StopIteration

    def _switch_to_buffered(self, exc: MemoryError) -> str:
        assert self._buffered is not None
        assert self._ctx is not None
        self._close_source()
        self._buffered_used = True
        self._record(FallbackUsed, step="buffered", index=1, after=(_describe(exc),))
        self._arm(self._total_at)  # one long call: only the total deadline applies
        try:
            answer = self._ctx.run(self._buffered)
            rest = self._splice(answer)
        except StreamInterrupted:
            self._end("error", "buffered answer diverged")
            raise
        except TimeoutError as error:
            self._on_timeout(error)
        except BaseException as error:  # not swallowed: recorded, then re-raised
            self._fail(error)
            raise
        if rest and self._screening:
            self._check(rest)
        self._parts.append(rest)
        self._end("complete")
        if rest:
            return rest
        raise StopIteration

    # -------------------------------------------------------------------------- ending

    def _fail(self, exc: BaseException) -> None:
        self._error = self._error or exc
        self._end("error", _describe(exc))
        self._interrupted(f"error: {_describe(exc)}")

    def _end(self, reason: str, detail: str = "") -> None:
        """Set the result, then close the source and leave the scope, whatever happens."""
        if self.result is not None:
            return
        self._finish(reason, detail)
        try:
            self._close_source()
        finally:
            if self._ctx is not None:
                self._ctx.run(self._scope.__exit__, None, None, None)

    def _close_source(self) -> None:
        if self._closed:
            return
        self._closed = True
        pump, self._pump = self._pump, None
        if pump is not None:
            if not pump.done:  # a worker that checks the scope stops at once
                self._scope.cancel("stream ended")
            if pump.stop():  # a non-generator source is closed here; a generator by the worker
                _close(self._source)
            self._abandoned = pump
            return
        if self._ctx is not None:
            self._ctx.run(_close, self._source)
        else:
            _close(self._source)

    def close(self) -> None:
        """Stop the stream early and close the source; idempotent. Records ``closed``."""
        if self.result is None:
            self._end("closed")
            self._interrupted("closed")

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel the stream from any thread; the next ``next()`` raises StreamInterrupted."""
        self._cancelled_here = True
        self._scope.cancel(reason)
        pump = self._pump
        if pump is not None:
            pump.ready.set()

    @property
    def abandoned(self) -> bool:
        """Threaded mode: the stream ended but its worker thread is still running."""
        pump = self._abandoned
        return pump is not None and pump.thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Threaded mode: wait (real time) for the worker thread; True once it has finished."""
        pump = self._abandoned or self._pump
        if pump is None:
            return True
        pump.thread.join(timeout)
        return not pump.thread.is_alive()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped after a `break`: close the source, but record nothing (no locks in a finaliser)
        if getattr(self, "result", True) is None:
            # no mutate: the result of a stream being collected is never read
            self._end("closed")  # pragma: no mutate

    def __repr__(self) -> str:
        state = self.result.reason if self.result is not None else "open"
        return f"<GuardedStream {self._guard.name!r} {state} chars={len(self.text)}>"


def _close(source: object) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()


class _Pump:
    """Pulls a source that cannot cooperate from a worker thread, at most ``ahead`` chunks ahead.

    The worker holds no reference to the guarded stream, so dropping the stream stops it.
    """

    def __init__(
        self, it: IteratorT[str], source: object, ctx: contextvars.Context, name: str
    ) -> None:
        self.buf: deque[str] = deque()
        self.ready = threading.Event()
        self.space = threading.Semaphore(64)
        self.stopping = False
        self.done = False
        self.error: BaseException | None = None
        self._generator = isinstance(source, types.GeneratorType)
        self.thread = threading.Thread(
            target=ctx.run,
            args=(self._work, it, source),
            name=f"pytest-resilience-stream:{name}",
            daemon=True,  # a source blocked forever must not keep the interpreter alive
        )
        self.thread.start()

    def _work(self, it: IteratorT[str], source: object) -> None:
        try:
            while True:
                # no mutate (the three breaks): return, like break, goes to the finally below
                self.space.acquire()
                if self.stopping:
                    break  # pragma: no mutate
                try:
                    chunk = next(it)
                except StopIteration:
                    break  # pragma: no mutate
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread, raised there
                    self.error = exc  # HangDetected too: the consumer must see it, not an end
                    break  # pragma: no mutate
                self.buf.append(chunk)
                self.ready.set()
        finally:
            try:
                _close(source)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread, raised there
                self.error = self.error or exc
            finally:
                self.done = True
                self.ready.set()

    def take(self, scope: CancelScope, clock: Clock) -> str:
        """The next chunk, waiting on ``clock`` until the scope's deadline."""
        buf, ready = self.buf, self.ready
        while True:
            if buf:
                chunk = buf.popleft()
                self.space.release()
                return chunk
            if self.done:
                if buf:
                    continue
                if self.error is not None:
                    raise self.error
                raise StopIteration
            ready.clear()
            if buf or self.done:
                continue
            scope.check()  # cancelled, or the deadline has passed
            remaining = scope.remaining()
            if remaining is None:
                ready.wait()  # no deadline: wait for the worker (or cancel()), in real time
            else:
                clock.wait(ready, remaining, what=f"{scope.name} (threaded)")

    def stop(self) -> bool:
        """Tell the worker to stop. True if the caller should close a non-generator source."""
        self.stopping = True
        self.space.release()  # wake a worker waiting for room
        return not self._generator and not self.done
