"""Thread tests that force the interleaving they are about instead of hoping for it.

A race needs one thread to stop inside a critical section while another goes through it.
Left to the scheduler, that almost never happens: a short loop finishes within its first
time slice. So a forced test parks one thread at a :class:`Gate` placed inside the code
under test (by handing it a stand-in for an object its critical section already calls: a
counter, a deque, a lock), lets another thread run up to or through the same section, and
then opens the gate. Nothing is added to the code under test.

Every wait is bounded by :data:`WAIT`, generous on purpose: the other thread needs
microseconds, so the bound only ever expires when a thread never arrives, and then it fails
the test saying which, instead of hanging it.

Beside each forced test, a stress test runs the real thing many times, its threads started
together by a barrier (:func:`run_together`) and the interpreter switching between them far
more often than usual (:func:`switching_often`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    import itertools
    from collections.abc import Callable, Iterator

__all__ = [
    "WAIT",
    "Gate",
    "GatedCounter",
    "Worker",
    "arrived",
    "parked",
    "run_together",
    "switching_often",
]

T = TypeVar("T")

#: The bound of every wait of these tests: it protects against a hang, and expires only
#: when the other thread never arrives (a broken test or a deadlock), never from slowness.
WAIT = 60.0


class Worker(threading.Thread, Generic[T]):
    """A thread that runs ``fn`` once and keeps its result or exception for the test."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = fn
        self._outcome: list[T] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._outcome.append(self._fn())
        except BaseException as exc:  # handed to the test by result()
            self.error = exc

    def result(self) -> T:
        """What ``fn`` returned (its exception is raised here), once the thread has ended."""
        self.join(WAIT)
        if self.is_alive():
            raise AssertionError(f"{self.name} did not end within {WAIT:.0f} s")
        if self.error is not None:
            raise self.error
        return self._outcome[0]


class Gate:
    """A point inside the code under test where one thread, the ``holder``, parks once.

    The code under test reaches it through a stand-in (:class:`GatedCounter`, or one a test
    module defines); every other thread, and the holder after its first pass, goes through.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.holder: threading.Thread | None = None
        self.reached = False  # the holder got here (set by the holder only)
        self._arrived = threading.Event()  # set when the holder parks here, or ends
        self._open = threading.Event()

    def __call__(self) -> None:
        if self.reached or threading.current_thread() is not self.holder:
            return
        self.reached = True
        self._arrived.set()
        if not self._open.wait(WAIT):
            raise AssertionError(f"the thread parked {self.where} was never let go")

    def ended(self) -> None:
        """The holder ended (whether it parked or not): nobody waits for it here any more."""
        self._arrived.set()

    def wait_reached(self, who: str) -> None:
        """Wait until the holder is parked here; fail if it never gets here."""
        if not self._arrived.wait(WAIT):
            raise AssertionError(f"{who} never reached the gate {self.where}")

    def open(self) -> None:
        self._open.set()


class GatedCounter:
    """Stands in for an ``itertools.count`` the code under test takes ``next()`` of: the
    gate's holder parks just ``before`` taking its number, or just after (then holding it)."""

    def __init__(self, inner: itertools.count[int], gate: Gate, *, before: bool) -> None:
        self.inner, self.gate, self.before = inner, gate, before

    def __iter__(self) -> GatedCounter:
        return self

    def __next__(self) -> int:
        if self.before:
            self.gate()
        number = next(self.inner)
        if not self.before:
            self.gate()
        return number

    def __repr__(self) -> str:  # faults.schedule reads a count's next number from its repr
        return repr(self.inner)


@contextlib.contextmanager
def parked(gate: Gate, fn: Callable[[], T], name: str = "the parked thread") -> Iterator[Worker[T]]:
    """Run ``fn`` in a thread that parks at ``gate``; the body runs while it is parked.

    On exit the gate opens and the thread gets :data:`WAIT` to end (``worker.result()`` then
    has what ``fn`` returned). Fails if the thread ends without reaching the gate.
    """

    def run() -> T:
        try:
            return fn()
        finally:
            gate.ended()

    worker = Worker(run, name)
    gate.holder = worker
    worker.start()
    try:
        gate.wait_reached(name)
        if not gate.reached:
            worker.result()  # its exception, if it raised one
            raise AssertionError(f"{name} ended without reaching the gate {gate.where}")
        yield worker
    finally:
        gate.open()
        worker.join(WAIT)


def arrived(signal: threading.Event, who: str, where: str) -> None:
    """Wait for ``signal``, set when ``who`` got ``where``; fail saying so if it never is."""
    if not signal.wait(WAIT):
        raise AssertionError(f"{who} never arrived {where}")


def run_together(worker: Callable[[int, threading.Barrier], None], threads: int = 4) -> None:
    """Run ``worker(index, barrier)`` in ``threads`` threads and join them; the first error
    of any is raised here. Each worker waits on the barrier before its work (and may wait
    on it again between rounds), so that the threads really run at the same time; a worker
    that fails breaks the barrier, so that the others do not wait for it."""
    barrier = threading.Barrier(threads, timeout=WAIT)
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            worker(index, barrier)
        except threading.BrokenBarrierError:
            pass  # another worker failed: its error is the one reported
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)
            barrier.abort()

    pool = [threading.Thread(target=guarded, args=(i,), name=f"stress-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(WAIT)
    assert not any(t.is_alive() for t in pool), "a stress thread did not end"
    if errors:
        raise errors[0]
    assert not barrier.broken, "the barrier broke: a thread never arrived"


@contextlib.contextmanager
def switching_often() -> Iterator[None]:
    """Make the interpreter switch threads far more often than usual, to shake out races."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
