"""Property: on a virtual clock, timers fire in deadline order, across threads and tasks."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_resilience.core.clock import VirtualClock

# Whole minutes add up exactly in floating point, and collide often (ties). The first nap is
# never zero: the test waits until every thread blocks in its first nap. So every actor
# sleeps at least a virtual minute: slept in real time, that would fail the bound below.
nap = st.integers(0, 12).map(lambda n: n * 60.0)
naps = st.tuples(nap.filter(bool), st.lists(nap, max_size=4)).map(lambda t: [t[0], *t[1]])


@pytest.mark.timeout(60)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(threads=st.lists(naps, max_size=3), tasks=st.lists(naps, max_size=3))
def test_timers_fire_in_deadline_order(
    threads: list[list[float]], tasks: list[list[float]]
) -> None:
    clock = VirtualClock(hang_grace=5.0)  # no presumption of silence on a loaded machine
    log: list[tuple[float, str]] = []  # (time when woken, who)
    guard = threading.Lock()

    def record(who: str) -> None:
        with guard:
            log.append((clock.now(), who))

    def sleeper(name: str, durations: list[float]) -> None:
        for seconds in durations:
            clock.sleep(seconds)
            record(name)

    async def napper(name: str, durations: list[float]) -> None:
        for seconds in durations:
            await asyncio.sleep(seconds)
            record(name)

    workers = [
        threading.Thread(target=sleeper, args=(f"thread{i}", d)) for i, d in enumerate(threads)
    ]

    async def main() -> None:
        jobs = [asyncio.create_task(napper(f"task{i}", d)) for i, d in enumerate(tasks)]
        for worker in workers:
            worker.start()
        # Time stands still (we hold it) until every thread sleeps; tasks start below.
        clock.wait_blocked(len(workers))
        await asyncio.gather(*jobs)

    started = time.perf_counter()
    with clock.hold():
        clock.run(main())
    for worker in workers:
        worker.join(10)
        assert not worker.is_alive()

    # Everybody woke exactly when its own naps say...
    actors = {f"thread{i}": d for i, d in enumerate(threads)}
    actors.update({f"task{i}": d for i, d in enumerate(tasks)})
    for who, durations in actors.items():
        assert [t for t, w in log if w == who] == list(itertools.accumulate(durations))
    # ...and nobody ran ahead of a timer due earlier: the timeline never goes backwards.
    assert [t for t, _ in log] == sorted(t for t, _ in log)
    total = max((sum(d) for d in actors.values()), default=0.0)
    assert clock.now() == total
    # virtual minutes cost no real ones; generous, for a loaded machine
    assert time.perf_counter() - started < 30
