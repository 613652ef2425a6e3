"""The stream guard in real time: how late it gives up on a stalled stream.

``python -m tests.bench.stream [--runs 50] [--idle-ms 50]``

Method
    A :class:`~pytest_resilience.core.stream.StreamGuard` on the :class:`SystemClock` with only an
    idle deadline wraps a source that delivers one chunk and then stalls. The consumer reads
    the chunk, notes the clock, and calls ``next()`` again, which raises ``StreamStalled``;
    the lateness is the time that call returned minus (chunk time + idle). Two sources:

    - cooperative: the stall waits in ``current_scope().wait()``, as an injected stall or a
      backend checking its scope does; the guard's scope deadline ends the wait;
    - non-cooperative, ``threaded=True``: the stall blocks on an event the source never
      checks the scope for; a worker thread pulls the source and the consumer waits on the
      clock until the deadline. After each run the event is set and the worker joined.

    A negative lateness would mean the guard gave up early (``min`` shows it never does).
    One unmeasured run of each warms up, then ``--runs`` measured runs each. Percentiles are
    nearest-rank. The goal: p95 within ``idle + 20 ms``, i.e. at most 20 ms late.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_resilience.core.cancel import current_scope
from pytest_resilience.core.clock import SystemClock
from pytest_resilience.core.errors import StreamStalled
from pytest_resilience.core.stream import StreamGuard

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

GOAL_LATE = 0.020  # seconds after the idle deadline, at p95


def cooperative() -> Iterator[str]:
    """One chunk, then a stall that the guard's scope ends."""
    yield "first"
    scope = current_scope()
    assert scope is not None, "the guard runs its source inside a cancel scope"
    scope.wait()  # raises DeadlineExceeded at the guard's idle deadline
    yield "never delivered"


def stubborn(release: threading.Event) -> Iterator[str]:
    """One chunk, then a stall that ignores every scope until ``release`` is set."""
    yield "first"
    release.wait()


def late_once(guard: StreamGuard, *, threaded: bool) -> float:
    """One run: seconds between the idle deadline and the consumer getting StreamStalled."""
    clock = guard.clock
    assert guard.idle is not None
    release = threading.Event()
    source = stubborn(release) if threaded else cooperative()
    stream = guard.wrap(source, threaded=threaded)
    try:
        next(stream)
        delivered = clock.now()
        try:
            next(stream)
        except StreamStalled:
            return clock.now() - (delivered + guard.idle)
        raise AssertionError("the guard did not detect the stall")
    finally:
        stream.close()
        release.set()  # let the abandoned worker finish, then make sure it has
        if not stream.join(timeout=5.0):
            raise AssertionError("the stream's worker thread did not stop")


@dataclass(frozen=True)
class Row:
    title: str
    late: list[float]  # seconds after the deadline, one per run

    def percentile(self, p: float) -> float:
        ordered = sorted(self.late)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    @property
    def met(self) -> bool:
        return self.percentile(95) <= GOAL_LATE


def measure(runs: int, idle: float) -> list[Row]:
    """``runs`` measured runs of each source (after one warm-up run each)."""
    guard = StreamGuard(idle=idle, clock=SystemClock(), name="bench")
    subjects: list[tuple[str, Callable[[], float]]] = [
        ("cooperative (scope.wait)", lambda: late_once(guard, threaded=False)),
        ("non-cooperative, threaded=True", lambda: late_once(guard, threaded=True)),
    ]
    rows = []
    for title, once in subjects:
        once()
        rows.append(Row(title, [once() for _ in range(runs)]))
    return rows


def format_report(rows: list[Row], runs: int, idle: float) -> str:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:8.2f} ms"

    lines = [
        f"stream guard, real time: lateness after the idle deadline "
        f"(SystemClock, idle {idle * 1000:g} ms, {runs} runs each)",
        "",
        f"{'source':<32}{'min':>11}{'p50':>11}{'p95':>11}{'max':>11}"
        f"   goal: p95 <= {GOAL_LATE * 1000:g} ms",
    ]
    lines += [
        f"{row.title:<32}{ms(min(row.late))}{ms(row.percentile(50))}{ms(row.percentile(95))}"
        f"{ms(max(row.late))}   {'met' if row.met else 'MISSED'}"
        for row in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print the table. Exit 1 only with ``--strict`` and a miss."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=50, help="measured runs per source (50)")
    parser.add_argument("--idle-ms", type=float, default=50.0, help="idle deadline, ms (50)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the goal is missed")
    args = parser.parse_args(argv)
    idle = args.idle_ms / 1000
    rows = measure(args.runs, idle)
    print(format_report(rows, args.runs, idle))
    return 1 if args.strict and not all(row.met for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
