"""The event loop of a :class:`~pytest_resilience.core.virtual_clock.VirtualClock`.

:meth:`VirtualClock.new_event_loop` makes one: an ``asyncio`` selector loop whose ``time()``
is the clock, and whose selector, instead of idling until the next timer, blocks on the
clock as a waiter (real I/O is still polled), so that time jumps there. Work it hands to
threads (``run_in_executor``, ``asyncio.to_thread``) counts as running for the clock until
its result is back on the loop. A loop on which every task waits for what nothing can
bring raises :class:`~pytest_resilience.core.errors.HangDetected` naming the tasks.

Real I/O: while a file descriptor other than the loop's own wakeup pipe is registered (a
socket, a pipe to a child process), the loop waits for it in real time, up to the clock's
``io_grace`` real seconds (never more than the virtual time to its next timer), before it
lets time jump; I/O that arrives starts the next wait afresh. When the next timer is an
``asyncio.sleep``, time jumps at once: the sleep asks for time to pass, and whatever a
socket brings is handled when the loop next polls.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import selectors
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, Unpack

from .errors import HangDetected

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Callable, Mapping
    from contextvars import Context

    from .virtual_clock import VirtualClock, _Waiter

__all__: list[str] = []

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# The callback ``asyncio.sleep`` schedules: a timer that runs it is a sleep, not a timeout.
_SLEEP_DONE: Any = getattr(asyncio.futures, "_set_result_unless_cancelled", None)
_MANY_SLEEPS = 256


@dataclass(eq=False)
class _Job:
    """A function the virtual loop runs in an executor: running until it has returned and
    its result has reached the loop (or the loop gave up on it before it started)."""

    thread: threading.Thread | None = None
    returned: bool = False
    delivered: bool = False


class _VirtualSelector(selectors.BaseSelector):
    """The loop's selector: real I/O as usual, but idling until a timer lets time jump."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self._inner = selectors.DefaultSelector()
        self._own: set[int] = set()  # the loop's self-pipe: not I/O from the outside world
        self.thread: threading.Thread | None = None  # the thread running the loop
        self.loop: _VirtualEventLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._inner.select(0)
        if events or (timeout is not None and timeout <= 0):
            return events
        found: list[tuple[selectors.SelectorKey, int]] = []

        def pause(_: _Waiter, seconds: float) -> bool:
            found.extend(self._inner.select(seconds))
            return bool(found)

        self.thread = threading.current_thread()
        outside_io = bool(set(self._inner.get_map()) - self._own)
        hold = 0.0
        if outside_io and not (self.loop is not None and self.loop._sleep_is_next(timeout)):
            grace = self._clock.io_grace
            hold = grace if timeout is None else min(grace, timeout)
        try:
            self._clock._block(
                timeout, None, "the virtual event loop", io=outside_io, hold=hold, pause=pause
            )
        except HangDetected:
            raise HangDetected(_describe_hang(self.loop)) from None
        return found or self._inner.select(0)

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()


class _VirtualEventLoop(asyncio.SelectorEventLoop):
    """An event loop that keeps :class:`VirtualClock` time (see ``new_event_loop``)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self._vselector = _VirtualSelector(clock)
        self._sleeps: list[tuple[float, int, asyncio.TimerHandle]] = []  # asyncio.sleep timers
        self._sleep_seq = itertools.count()
        super().__init__(self._vselector)
        self._vselector._own = set(self._vselector.get_map())
        self._vselector.loop = self

    def time(self) -> float:
        return self.clock.now()

    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        handle = super().call_at(when, callback, *args, context=context)
        if _SLEEP_DONE is not None and callback is _SLEEP_DONE:
            self._prune_sleeps()
            heapq.heappush(self._sleeps, (handle.when(), next(self._sleep_seq), handle))
        return handle

    def _sleep_is_next(self, timeout: float | None) -> bool:
        """Whether the loop's next timer, ``timeout`` virtual seconds away, is a sleep's."""
        if timeout is None:
            return False
        now = self._prune_sleeps()
        sleeps = self._sleeps
        return bool(sleeps) and sleeps[0][0] <= now + timeout + 1e-9 * max(1.0, abs(now))

    def _prune_sleeps(self) -> float:
        """Forget the sleeps' timers that have run or were cancelled; returns the time now."""
        now, sleeps = self.clock._now, self._sleeps
        while sleeps and (sleeps[0][0] <= now or sleeps[0][2].cancelled()):
            heapq.heappop(sleeps)  # run already (due timers are taken before each select)
        if len(sleeps) > _MANY_SLEEPS:  # many cancelled behind a live one: sweep them all
            self._sleeps = [s for s in sleeps if not s[2].cancelled()]
            heapq.heapify(self._sleeps)
        return now

    def call_soon_threadsafe(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: Context | None = None,
    ) -> asyncio.Handle:
        handle = super().call_soon_threadsafe(callback, *args, context=context)
        # Tell the clock before the loop's next poll notices, so time does not jump between.
        self.clock._kick(self._vselector.thread)
        return handle

    def run_in_executor(
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[[Unpack[_Ts]], _T],
        *args: *_Ts,
    ) -> asyncio.Future[_T]:
        # A job counts as running from submission until its result has reached the loop, so
        # time stands still while a thread works for the loop (asyncio.to_thread).
        clock, job = self.clock, _Job()

        def run() -> _T:
            clock._job_started(job)
            try:
                return func(*args)
            finally:
                clock._job_progress(job, returned=True)

        clock._job_submitted(job)
        future = super().run_in_executor(executor, run)
        future.add_done_callback(lambda _: clock._job_progress(job, delivered=True))
        return future

    async def shutdown_default_executor(self, *args: Any) -> None:
        # asyncio joins the executor's threads from a thread of its own, which the clock
        # cannot see: the loop waiting for it would look like a hang. It is a job for the
        # loop like any other, running until the shutdown has returned to the loop.
        job = _Job()
        self.clock._job_submitted(job)
        try:
            await super().shutdown_default_executor(*args)
        finally:
            self.clock._job_progress(job, delivered=True)


def _describe_hang(loop: asyncio.AbstractEventLoop | None) -> str:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()] if loop is not None else []
    where = "; ".join(f"{t.get_name()} at {_suspended_at(t)}" for t in tasks) or "no task"
    return (
        "every task on the virtual event loop is blocked, no timer is pending and nothing "
        f"else is running, so nothing can wake them: {where}. Put a timeout "
        "(asyncio.timeout, asyncio.wait_for or a deadline scope) above the await that never "
        "completes."
    )


def _suspended_at(task: asyncio.Task[Any]) -> str:
    """Where a suspended task waits: the coroutine frames of its await chain, outermost
    first (``test_it() (...) > wait() (...)``)."""
    coro: Any = task.get_coro()
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_name}() ({frame.f_code.co_filename}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " > ".join(frames) or "an unknown place"
