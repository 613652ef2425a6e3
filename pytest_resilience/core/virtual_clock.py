"""The virtual clock: time that moves only when somebody waits.

Tests pass a :class:`VirtualClock` wherever a component takes a ``clock``
(:mod:`pytest_resilience.core.clock`), so a ten-minute backoff costs microseconds.

How a :class:`VirtualClock` moves (trio's ``MockClock`` with autojump is the model):

- Every blocked ``sleep``/``wait`` (and a virtual event loop idling in ``select``) is a
  *waiter*; waiters with a deadline sit in a heap.
- Time jumps to the earliest deadline when no waiter is ready (its event set), no thread the
  clock knows about is running, and nothing has touched the clock for
  ``autojump_threshold`` real seconds (default 0: at once). The threads it knows are running:
  a thread it just woke, until that thread waits on the clock again, ends, or has been
  silent for ``hang_grace``; a thread inside :meth:`VirtualClock.hold`; a thread running a
  job for the virtual event loop (``run_in_executor``, ``asyncio.to_thread``).
- A virtual event loop waiting on real I/O (a socket or pipe of its own is registered) holds
  time still for up to ``io_grace`` real seconds per wait, so that an answer coming in real
  time arrives before a timer it would have beaten for real; any I/O starts a new wait.
  Only when the loop's next timer is an ``asyncio.sleep`` does time jump at once: a sleep
  asks for time to pass, whatever the sockets do. The hold never exceeds the virtual time
  to the loop's next timer, so a loop never runs slower than real time.
- Waiters wake in deadline order, FIFO on ties. ``advance()`` moves time by hand.
- A wait that nothing can end (no deadline anywhere, nothing running, no real I/O pending)
  raises :class:`~pytest_resilience.core.errors.HangDetected` once every Python thread is stuck
  on the clock, or after ``hang_grace`` real seconds of silence otherwise.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import HangDetected
from .virtual_loop import _VirtualEventLoop

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator

    from .virtual_loop import _Job

__all__ = ["VirtualClock"]

_T = TypeVar("_T")

# Real time, for the clock's own bookkeeping only (thresholds and graces are real seconds).
_real = time.monotonic

# A blocked waiter rechecks the clock this often (real seconds). It is what bounds the delay
# before a waiter sees an event set by a thread that did not call notify(), a thread that
# ended, or a threshold that passed; wakeups the clock itself causes are immediate.
_POLL = 0.002

_READY, _TIMEOUT, _HANG = "ready", "timeout", "hang"


@dataclass(eq=False)
class _Waiter:
    deadline: float | None
    thread: threading.Thread
    what: str
    event: threading.Event | None = None
    io: bool = False  # an event loop waiting on real I/O: other processes may end the wait
    hold_until: float = 0.0  # real time until which time stands still for this waiter's I/O
    outcome: str | None = None  # set once, under the lock, when the waiter is woken
    message: str = ""
    wakeup: threading.Event = field(default_factory=threading.Event)


class VirtualClock:
    """Time that moves only when somebody waits (see the module docstring for the rules).

    ``autojump_threshold``: real seconds of silence on the clock before time jumps to the
    next deadline (0: at once; raise it when a test waits for real I/O or real work in
    threads the clock cannot see). ``hang_grace``: real seconds of silence after which a
    thread the clock woke and has not heard from since is presumed blocked elsewhere, and a
    wait that no deadline can end is reported as a hang (when not every thread is on the
    clock, which is reported at once). ``io_grace``: real seconds a virtual event loop with
    real I/O pending waits for it before time jumps to its next timer (see the module
    docstring); raise it for tests whose real servers take longer to answer.

    ``wait(event, None)`` that nothing can end raises :class:`HangDetected` naming ``what``.
    """

    def __init__(
        self,
        start: float = 0.0,
        *,
        autojump_threshold: float = 0.0,
        hang_grace: float = 0.25,
        io_grace: float = 0.5,
    ) -> None:
        if autojump_threshold < 0 or hang_grace < 0 or io_grace < 0:
            raise ValueError("autojump_threshold, hang_grace and io_grace are real seconds >= 0")
        self.autojump_threshold = autojump_threshold
        self.hang_grace = hang_grace
        self.io_grace = io_grace
        self._now = start
        # One lock guards everything below. It is never held while a waiter blocks.
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, _Waiter]] = []  # may hold woken waiters: skip them
        self._blocked: dict[_Waiter, None] = {}  # every waiter not yet woken, in FIFO order
        self._woken: set[threading.Thread] = set()  # woken, not yet back on the clock
        self._held: dict[threading.Thread, int] = {}  # hold() depth per thread
        self._jobs: set[_Job] = set()
        self._touched = _real()  # real time the clock was last used

    # ------------------------------------------------------------------ public API

    def now(self) -> float:
        self._touched = _real()
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (never backwards). The waiters now due wake in
        deadline order, each once the one before has gone back to waiting or ended."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds}s)")
        with self._lock:
            self._now += seconds
            self._touched = _real()
            self._step()

    def sleep(self, seconds: float) -> None:
        """Block until ``seconds`` of virtual time have passed."""
        if seconds <= 0:
            self._touched = _real()
            return
        self._block(seconds, None, f"sleep({seconds:g})")

    async def asleep(self, seconds: float) -> None:
        """``asyncio.sleep`` on this clock's loop; elsewhere, advance the clock and yield."""
        loop = asyncio.get_running_loop()
        if isinstance(loop, _VirtualEventLoop) and loop.clock is self:
            await asyncio.sleep(max(seconds, 0.0))
        else:
            self.advance(max(seconds, 0.0))
            await asyncio.sleep(0)

    def wait(self, event: threading.Event, timeout: float | None = None, *, what: str = "") -> bool:
        """Block until ``event`` is set (True) or ``timeout`` virtual seconds pass (False).

        Raises :class:`HangDetected` when no deadline can end the wait and nothing that could
        set the event is running.
        """
        if event.is_set() or (timeout is not None and timeout <= 0):
            self._touched = _real()
            return event.is_set()
        self._block(timeout, event, what or "a wait")
        return event.is_set()

    def notify(self) -> None:
        """Recheck the waiters now. Call it after setting an event a waiter waits on, to wake
        it at once instead of at its next poll (``CancelScope.cancel()`` does)."""
        with self._lock:
            self._touched = _real()
            self._step()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep time still while this block runs in the calling thread.

        The clock does not jump while the block runs, except while the thread itself waits on
        the clock. Use it to start threads that must all be waiting before time moves.
        """
        me = threading.current_thread()
        with self._lock:
            self._held[me] = self._held.get(me, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._held[me] -= 1
                if not self._held[me]:
                    del self._held[me]
                    self._woken.discard(me)
                self._step()

    def wait_blocked(self, count: int = 1, *, timeout: float = 10.0) -> None:
        """Block until at least ``count`` waiters are blocked on the clock.

        Call it inside :meth:`hold`, or time may move before it returns. Raises
        ``TimeoutError`` after ``timeout`` real seconds.
        """
        give_up = _real() + timeout
        while True:
            with self._lock:
                self._touched = _real()  # an observer that is about to act: not silence
                self._step()
                if len(self._blocked) >= count:
                    return
            # no mutate: ">" gives up one poll later, only when a reading equals give_up
            if _real() >= give_up:  # pragma: no mutate
                raise TimeoutError(f"fewer than {count} waiters blocked after {timeout}s")
            threading.Event().wait(_POLL)

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A new event loop whose ``time()`` is this clock and which, instead of idling until
        its next timer, lets the clock jump there."""
        return _VirtualEventLoop(self)

    def run(self, main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
        """``asyncio.run(main)`` on a loop from :meth:`new_event_loop`."""
        try:
            with asyncio.Runner(debug=debug, loop_factory=self.new_event_loop) as runner:
                return runner.run(main)
        finally:
            self._forget(threading.current_thread())

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now:.6f})"

    # ------------------------------------------------------------------ blocking

    def _block(
        self,
        timeout: float | None,
        event: threading.Event | None,
        what: str,
        *,
        io: bool = False,
        hold: float = 0.0,
        pause: Callable[[_Waiter, float], bool] | None = None,
    ) -> _Waiter:
        """Register the calling thread as a waiter and block until the clock wakes it.

        ``hold``: real seconds during which time may not move past now (real I/O the waiter
        expects). ``pause(waiter, seconds)`` blocks for up to ``seconds`` real seconds
        without the lock and returns True if the waiter became ready by itself (real I/O for
        an event loop). Raises :class:`HangDetected` if the clock reports the wait as a hang.
        """
        with self._lock:
            waiter = self._register(timeout, event, what, io)
            if hold > 0:
                waiter.hold_until = _real() + hold
            self._step()
        try:
            while waiter.outcome is None:
                if (pause or _wait_for_wakeup)(waiter, _POLL):
                    # no mutate: "return" skips only the hang check of a waiter that is
                    # ready, and returns None, where no caller reads what _block returns
                    break  # pragma: no mutate
                with self._lock:
                    self._step()
        finally:
            with self._lock:
                if waiter.outcome is None:  # ready by itself, or interrupted (^C)
                    self._wake(waiter, _READY)
        if waiter.outcome == _HANG:
            raise HangDetected(waiter.message)
        return waiter

    def _register(
        self, timeout: float | None, event: threading.Event | None, what: str, io: bool
    ) -> _Waiter:
        deadline = None
        if timeout is not None:
            # Progress even when timeout is below the resolution of a large ``now``.
            deadline = max(self._now + timeout, math.nextafter(self._now, math.inf))
        waiter = _Waiter(deadline, threading.current_thread(), what, event, io)
        self._blocked[waiter] = None
        if deadline is not None:
            heapq.heappush(self._heap, (deadline, next(self._seq), waiter))
        self._woken.discard(waiter.thread)  # it is back on the clock
        self._touched = _real()
        return waiter

    def _wake(self, waiter: _Waiter, outcome: str) -> None:
        del self._blocked[waiter]
        waiter.outcome = outcome
        self._woken.add(waiter.thread)  # running until it comes back, ends, or goes quiet
        self._touched = _real()
        waiter.wakeup.set()

    def _forget(self, thread: threading.Thread) -> None:
        """``thread`` no longer counts as running (it left the clock's business)."""
        with self._lock:
            self._woken.discard(thread)
            self._step()

    # ------------------------------------------------------------------ the scheduler

    def _step(self) -> None:
        """Wake what can go on; if nothing can, jump to the next deadline or report a hang.

        Lock held. Invariants: a waiter is in ``_blocked`` until its ``outcome`` is set once,
        and is never touched after; time only moves forward, to the earliest deadline; a
        waiter whose deadline has come is woken only when no known thread is running, one at
        a time, so waiters run in deadline order (FIFO on ties) as on a single thread.
        """
        for waiter in [w for w in self._blocked if w.event is not None and w.event.is_set()]:
            self._wake(waiter, _READY)
        quiet = _real() - self._touched
        if self._anything_running(quiet):
            return
        deadline = self._earliest()
        if deadline is not None:
            if deadline > self._now:
                if quiet < self.autojump_threshold or self._held_for_io():
                    return
                self._now = deadline
            self._wake(heapq.heappop(self._heap)[2], _TIMEOUT)
        elif self._blocked and self._hung(quiet):
            self._report_hang()

    def _earliest(self) -> float | None:
        while self._heap and self._heap[0][2].outcome is not None:
            heapq.heappop(self._heap)  # woken by its event before its deadline
        return self._heap[0][0] if self._heap else None

    def _anything_running(self, quiet: float) -> bool:
        # no mutate: ">" differs only when a real-time reading repeats exactly
        if quiet >= self.hang_grace:  # pragma: no mutate
            self._woken.clear()  # silent that long: presumed blocked outside the clock
        else:
            self._woken = {t for t in self._woken if t.is_alive()}
        waiting = {w.thread for w in self._blocked}
        return (
            bool(self._woken)
            or any(t not in waiting for t in self._held)
            or any(job.thread is None or job.thread not in waiting for job in self._jobs)
        )

    def _held_for_io(self) -> bool:
        """Whether a waiter still expects real I/O within its hold (time stands still)."""
        holds = [w.hold_until for w in self._blocked if w.hold_until]
        return bool(holds) and max(holds) > _real()

    def _hung(self, quiet: float) -> bool:
        if any(w.io for w in self._blocked):
            return False  # real I/O may still end it
        if quiet >= self.hang_grace:  # pragma: no mutate - as in _anything_running
            return True
        # Every Python thread is stuck on this clock: nobody is left to set an event.
        waiting = {w.thread for w in self._blocked}
        return all(t in waiting for t in threading.enumerate())

    def _report_hang(self) -> None:
        stuck = list(self._blocked)
        for waiter in stuck:
            others = ", ".join(w.what for w in stuck if w is not waiter)
            waiter.message = (
                f"{waiter.what} can never end: it waits with no timeout and nothing that could "
                "end it is running"
                + (f" (also stuck: {others})" if others else "")
                + ". Give this wait a timeout, or put a deadline scope above it."
            )
            self._wake(waiter, _HANG)

    # ------------------------------------------------------------------ event loop support

    def _kick(self, thread: threading.Thread | None) -> None:
        """Another thread scheduled work on the loop run by ``thread``: wake it now."""
        with self._lock:
            for waiter in [w for w in self._blocked if w.thread is thread]:
                self._wake(waiter, _READY)

    def _job_submitted(self, job: _Job) -> None:
        with self._lock:
            self._jobs.add(job)

    def _job_started(self, job: _Job) -> None:
        with self._lock:
            job.thread = threading.current_thread()
            self._jobs.add(job)  # again, if the loop gave up on it before it started

    def _job_progress(self, job: _Job, *, returned: bool = False, delivered: bool = False) -> None:
        with self._lock:
            if returned:
                job.returned = True
                # Back in the executor's idle pool: the job, not the thread, is what runs.
                self._woken.discard(threading.current_thread())
            job.delivered |= delivered
            if job.delivered and (job.returned or job.thread is None):
                self._jobs.discard(job)  # done, or cancelled before it started
            self._step()


def _wait_for_wakeup(waiter: _Waiter, seconds: float) -> bool:
    waiter.wakeup.wait(seconds)
    return False
