"""The streaming guard: first-token, idle and total deadlines on any stream of text chunks.

::

    guard = StreamGuard(first_token=10.0, idle=5.0, total=120.0, clock=clock, journal=journal)
    with guard.wrap(backend.stream(prompt)) as chunks:
        for chunk in chunks:            # StreamStalled if a deadline passes; .partial kept
            show(chunk)
    result = guard.collect(backend.stream(prompt))   # or the whole text as a StreamResult

Deadlines, all on the guard's clock and measured from the first ``next()`` (or ``start()``):

- ``first_token``: the first chunk must arrive within this many seconds;
- ``idle``: every later chunk within this many seconds of the one before;
- ``total``: the whole stream within this many seconds.

How a stream is stopped. The source is iterated in the caller's thread inside a
:class:`~pytest_resilience.core.cancel.CancelScope` whose deadline moves after every chunk (the
first-token deadline before the first chunk, then the earlier of the idle and the total
deadline, and never later than a scope around the guard). Sources that cooperate stop at
exactly the deadline: the llama backend checks the scope between tokens, the daemon backend
derives its read timeout from it, an injected stall waits in ``current_scope().wait()``. A
chunk from a source that does not cooperate, arriving after the deadline, is not delivered:
the stall is reported when it arrives. ``wrap(source, threaded=True)`` is for sources that can
block forever: a worker thread pulls the chunks (at most 64 ahead), so the guard can give up
at the deadline; the worker is then told to stop, a non-generator source is closed from the
consumer's thread (so its ``close()`` must be thread-safe, as a ``TextStream``'s is), and a
worker still blocked is reported (``stream.abandoned``, ``stream.join()``), never silently
left: its thread is named ``pytest-resilience-stream:<name>`` for the leak check.

How a stream ends (``stream.result``, a :class:`StreamResult`):

- ``complete``: the source ran out;
- ``first_token`` / ``idle`` / ``total``: a deadline passed. Raises
  :class:`~pytest_resilience.core.errors.StreamStalled` (``which``, ``waited``, ``partial``), or
  with ``on_stall="return"`` ends the iteration normally and leaves the result incomplete;
- ``cancelled``: the stream's own ``cancel()`` was called: raises
  :class:`~pytest_resilience.core.errors.StreamInterrupted` (``reason``, ``partial``), from the
  :class:`~pytest_resilience.core.errors.Cancelled` if the source raised one. A scope around the
  guard was cancelled (or the source raised ``Cancelled`` of its own): the ``Cancelled``
  propagates unchanged, a ``BaseException`` that no retry, breaker or fallback above may take
  for a failure; the partial text is ``stream.text``. In async code the task's
  ``asyncio.CancelledError`` propagates unchanged too;
- ``error``: the source raised. The exception propagates unchanged (retry policies, breakers
  and the classifier need its real type); the partial text is ``stream.text``. A
  :class:`~pytest_resilience.core.errors.HangDetected` (a source waiting on a virtual clock for
  what never comes, in the consumer's thread or in the worker of ``threaded=True``) ends the
  stream the same way: the source is closed, the end recorded, and the hang goes on up
  unchanged, never turned into a stall or an end of the stream;
- ``closed``: the consumer stopped early (``close()``, leaving ``with``, ``break``).

Whatever the end, the source's ``close()`` (``aclose()``) runs, once. Journal events:
``StreamFirstToken(latency)``; ``StreamStalled(which, waited, partial)``;
``StreamCancelled(reason, partial)`` for cancellation, errors and early exits (reason
``"cancelled: ..."``, ``"error: Type: message"`` or ``"closed"``). Early exit is recorded by
``close()`` and ``with``; a stream merely dropped after ``break`` is closed by the garbage
collector without an event (a finaliser must not take locks).

Buffered generation on out-of-memory. With ``buffered=`` (a callable returning the whole
completion), a ``MemoryError`` (``ResourceExhausted`` is one) from the source closes it and
calls ``buffered()`` once, inside the total deadline. The consumer already holds the partial
text, so the stream yields only what the buffered answer adds after it: if the answer starts
with the partial text (deterministic decoding), the rest of it; if it does not, nothing can be
spliced without duplicating or contradicting what was delivered, and
:class:`~pytest_resilience.core.errors.StreamInterrupted` is raised (reason
``"buffered answer diverged"``). A second ``MemoryError`` propagates. A ``FallbackUsed``
event (step ``"buffered"``) records the switch.

Cost: a chunk costs one clock read, a cancellation check and a few assignments, well under
a microsecond on top of the source (see ``tests/unit/test_stream.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import types
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Self

from .cancel import CancelScope, current_scope
from .clock import Clock, SystemClock
from .errors import Cancelled, StreamInterrupted, StreamStalled
from .events import FallbackUsed, StreamCancelled, StreamFirstToken
from .events import StreamStalled as StalledEvent

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
    from collections.abc import Iterator as IteratorT

    from .events import Event, Journal

__all__ = ["AsyncGuardedStream", "GuardedStream", "StreamGuard", "StreamResult"]

_INF = float("inf")
OnStall = Literal["raise", "return"]


@dataclass(frozen=True, slots=True)
class StreamResult:
    """How a guarded stream ended.

    ``reason`` is ``"complete"``, ``"first_token"``, ``"idle"``, ``"total"``, ``"cancelled"``,
    ``"error"`` or ``"closed"``; ``detail`` says more (the cancel reason, the error).
    ``buffered`` is true when the end came from buffered generation after an out-of-memory
    error; ``first_token`` is the first chunk's latency, or None if none arrived.
    """

    text: str
    complete: bool
    reason: str
    detail: str = ""
    buffered: bool = False
    first_token: float | None = None


class StreamGuard:
    """Deadlines and reporting for streams; ``wrap()`` / ``awrap()`` apply them to one stream.

    ``first_token``, ``idle`` and ``total`` are seconds, or None for no such deadline.
    ``on_stall="return"`` ends a stalled stream normally instead of raising. Raises
    ``ValueError`` for a negative deadline or an unknown ``on_stall``.
    """

    def __init__(
        self,
        *,
        first_token: float | None = None,
        idle: float | None = None,
        total: float | None = None,
        on_stall: OnStall = "raise",
        clock: Clock | None = None,
        journal: Journal | None = None,
        name: str = "stream",
    ) -> None:
        for what, value in (("first_token", first_token), ("idle", idle), ("total", total)):
            if value is not None and value < 0:
                raise ValueError(f"StreamGuard {what} must be >= 0 seconds, got {value}")
        if on_stall not in ("raise", "return"):
            raise ValueError(f"on_stall must be 'raise' or 'return', got {on_stall!r}")
        self.first_token = first_token
        self.idle = idle
        self.total = total
        self.on_stall: OnStall = on_stall
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.journal = journal
        self.name = name

    def wrap(
        self,
        source: Iterable[str],
        *,
        buffered: Callable[[], str] | None = None,
        threaded: bool = False,
    ) -> GuardedStream:
        """Guard ``source`` (any iterable of str; closed through its ``close()`` if it has one)."""
        return GuardedStream(self, source, buffered=buffered, threaded=threaded)

    def awrap(
        self,
        source: AsyncIterable[str],
        *,
        buffered: Callable[[], Awaitable[str]] | None = None,
    ) -> AsyncGuardedStream:
        """Guard an async iterable of str (closed through its ``aclose()`` if it has one)."""
        return AsyncGuardedStream(self, source, buffered=buffered)

    def collect(
        self,
        source: Iterable[str],
        *,
        buffered: Callable[[], str] | None = None,
        threaded: bool = False,
    ) -> StreamResult:
        """Read the whole guarded stream. Raises as iterating ``wrap(source)`` does."""
        with self.wrap(source, buffered=buffered, threaded=threaded) as stream:
            for _ in stream:
                pass
        assert stream.result is not None  # the loop ended, so the stream did
        return stream.result

    async def acollect(
        self,
        source: AsyncIterable[str],
        *,
        buffered: Callable[[], Awaitable[str]] | None = None,
    ) -> StreamResult:
        """Read the whole guarded async stream. Raises as iterating ``awrap(source)`` does."""
        async with self.awrap(source, buffered=buffered) as stream:
            async for _ in stream:
                pass
        assert stream.result is not None
        return stream.result

    def __repr__(self) -> str:
        return (
            f"StreamGuard(first_token={self.first_token}, idle={self.idle}, "
            f"total={self.total}, on_stall={self.on_stall!r})"
        )


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
        self.result: StreamResult | None = None

    @property
    def text(self) -> str:
        """Everything delivered so far (the partial text after an early end)."""
        return "".join(self._parts)

    @property
    def ended(self) -> bool:
        return self.result is not None

    def _begin(self) -> None:
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
            self._journal.append(event(time=self._now(), source=self._guard.name, **fields))

    def _finish(self, reason: str, detail: str = "") -> StreamResult:
        self.result = StreamResult(
            self.text,
            reason == "complete",
            reason,
            detail,
            self._buffered_used,
            self._latency,
        )
        return self.result

    def _stalled(self, which: str, waited: float) -> StreamStalled | None:
        """Record a stall; the error to raise, or None in ``on_stall="return"`` mode."""
        partial = self.text
        self._record(StalledEvent, which=which, waited=waited, partial=partial)
        if self._guard.on_stall == "raise":
            return StreamStalled(which, waited, partial)
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


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# ------------------------------------------------------------------------------ sync


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
        self._parent: CancelScope | None = None
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
        if self._latency is None:
            self._first(now)
        self._parts.append(chunk)
        self._last = now
        at = now + self._idle
        self._arm(at if at < self._total_at else self._total_at)
        return chunk

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
        self._parts.append(rest)
        self._end("complete")
        if rest:
            return rest
        raise StopIteration

    # -------------------------------------------------------------------------- ending

    def _fail(self, exc: BaseException) -> None:
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
            self._end("closed")

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
                self.space.acquire()
                if self.stopping:
                    break
                try:
                    chunk = next(it)
                except StopIteration:
                    break
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread, raised there
                    self.error = exc  # HangDetected too: the consumer must see it, not an end
                    break
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


# ----------------------------------------------------------------------------- async


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
                chunk = await self._ait.__anext__()
        except StopAsyncIteration:
            await self._aend("complete")
            raise
        except TimeoutError as exc:
            due = self._stall_if_due(self._now())
            if due is None:  # a deadline around the guard, or inside the source: not ours
                await self._afail(exc)
                raise
            await self._astall(*due, cause=exc)
        except Cancelled as exc:
            await self._aend("cancelled", exc.reason)
            self._interrupted(f"cancelled: {exc.reason}")
            if self._cancel_reason is None:  # a scope around the guard: the caller's, as it is
                raise
            raise StreamInterrupted(f"cancelled: {exc.reason}", self.text) from exc
        except asyncio.CancelledError:  # the task was cancelled: close, record, re-raise as is
            await self._aend("cancelled", "task cancelled")
            self._interrupted("cancelled: task cancelled")
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
        now = self._now()
        if now > self._armed:  # a source that moved the clock without checking the scope
            await self._astall(*(self._stall_if_due(now) or ("idle", now - self._last)))
        if self._latency is None:
            self._first(now)
        self._parts.append(chunk)
        self._last = now
        self._armed = min(now + self._idle, self._total_at)
        return chunk

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
        except asyncio.CancelledError:
            self._finish("cancelled", "task cancelled")
            self._interrupted("cancelled: task cancelled")
            raise
        except BaseException as error:  # not swallowed: recorded, then re-raised
            self._finish("error", _describe(error))
            self._interrupted(f"error: {_describe(error)}")
            raise
        self._parts.append(rest)
        self._finish("complete")
        if rest:
            return rest
        raise StopAsyncIteration

    async def _afail(self, exc: BaseException) -> None:
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
