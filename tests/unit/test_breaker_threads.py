"""Threaded stress tests: exact counts, the probe cap, and a legal journal under contention.

Time is virtual: every worker moves the shared clock a millisecond per call, so the breaker
opens, half-opens and closes many times without anybody sleeping.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from pytest_resilience.core.breaker import CircuitBreaker, CountWindow, HalfOpen, Permit
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import CircuitOpenError
from pytest_resilience.core.events import BreakerTransition, CallRejected
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

THREADS = 4
CALLS = 100_000  # per thread
PROBES = 2
AUTOMATIC = {
    ("closed", "open"),
    ("open", "half_open"),
    ("half_open", "open"),
    ("half_open", "closed"),
}
MANUAL_TARGETS = {"closed", "forced_open", "forced_closed", "disabled"}


class Boom(ConnectionError):
    pass


class Skip(Exception):
    pass


@pytest.fixture(autouse=True)
def frequent_switches() -> Iterator[None]:
    """Switch threads far more often than usual, to shake out races."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def run_threads(worker: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(seed: int) -> None:
        try:
            worker(seed)
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(seed,)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]


def check_chain(events: list[BreakerTransition], manual: bool) -> None:
    state = "closed"
    for event in events:
        assert event.from_state == state, f"{event} does not follow {state}"
        legal = (event.from_state, event.to_state) in AUTOMATIC or (
            manual and event.to_state in MANUAL_TARGETS and event.from_state != event.to_state
        )
        assert legal, f"illegal transition {event.from_state}->{event.to_state}"
        state = event.to_state


def test_stress_counts_probe_cap_and_journal() -> None:
    clock = VirtualClock()
    journal = Journal(maxlen=10_000_000)
    breaker = CircuitBreaker(
        "stress",
        on=Boom,
        exclude=Skip,
        trip=CountWindow(size=20, rate=0.5, min_calls=10),
        recovery=HalfOpen(after=0.05, probes=PROBES, successes=3),
        clock=clock,
        journal=journal,
    )
    admitted = [0] * THREADS
    rejected = [0] * THREADS
    tally = threading.Lock()
    in_flight: Counter[int] = Counter()  # permits held by the test, by generation
    peak: Counter[int] = Counter()
    stats_over_cap: list[int] = []
    start = threading.Barrier(THREADS)

    def outcome(rng: random.Random, i: int) -> Callable[[], None]:
        # Phases of bad and good health, so the breaker keeps moving.
        failing = rng.random() < (0.8 if (i // 1_500) % 2 else 0.05)
        kind = Boom if failing else (Skip if rng.random() < 0.05 else None)

        def work() -> None:
            if kind is not None:
                raise kind

        return work

    def settle(permit: Permit, work: Callable[[], None]) -> None:
        with tally:
            in_flight[permit.generation] -= 1
        try:
            work()
        except Exception as exc:
            permit.settle(exc)
        else:
            permit.success()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        held: list[tuple[Permit, Callable[[], None]]] = []
        start.wait()
        for i in range(CALLS):
            clock.advance(0.001)
            work = outcome(rng, i)
            try:
                if rng.random() < 0.5:
                    breaker.call(work)
                else:
                    permit = breaker.acquire()
                    with tally:
                        in_flight[permit.generation] += 1
                        peak[permit.generation] = max(
                            peak[permit.generation], in_flight[permit.generation]
                        )
                    held.append((permit, work))
            except CircuitOpenError:
                rejected[seed] += 1
            except (Boom, Skip):
                admitted[seed] += 1
            else:
                admitted[seed] += 1
            if len(held) > rng.randrange(3):  # hold permits across other calls
                settle(*held.pop(0))
            if i % 97 == 0 and breaker.stats().probes_in_flight > PROBES:
                stats_over_cap.append(i)
        for permit, work in held:
            settle(permit, work)

    run_threads(worker)

    total = THREADS * CALLS
    assert sum(admitted) + sum(rejected) == total
    assert stats_over_cap == []
    assert journal.dropped == 0
    assert len(journal.events(CallRejected)) == sum(rejected)
    transitions = journal.events(BreakerTransition)
    check_chain(transitions, manual=False)
    # No manual actions: every generation after the first is one journaled transition.
    assert breaker.stats().generation == len(transitions)
    half_open_gens = [g for g, e in enumerate(transitions, 1) if e.to_state == "half_open"]
    assert max(peak[g] for g in half_open_gens) <= PROBES
    # The run really exercised the machine.
    kinds = Counter((e.from_state, e.to_state) for e in transitions)
    assert set(kinds) == AUTOMATIC, kinds
    assert any(peak[g] >= 1 for g in half_open_gens)
    assert sum(rejected) > 0
    assert breaker.stats().probes_in_flight == 0  # every permit was settled


def test_stress_with_manual_actions() -> None:
    clock = VirtualClock()
    journal = Journal(maxlen=1_000_000)
    breaker = CircuitBreaker(
        "manual",
        on=Boom,
        recovery=HalfOpen(after=0.01, probes=1),
        clock=clock,
        journal=journal,
    )
    calls = 5_000
    counted = [0] * THREADS
    actions: list[Callable[[], None]] = [
        breaker.reset,
        breaker.force_open,
        breaker.force_closed,
        breaker.disable,
    ]

    def worker(seed: int) -> None:
        rng = random.Random(seed)

        def work() -> None:
            if rng.random() < 0.6:
                raise Boom

        for _ in range(calls):
            clock.advance(0.001)
            if seed == 0 and rng.random() < 0.02:
                rng.choice(actions)()
            with contextlib.suppress(CircuitOpenError, Boom):
                breaker.call(work)
            counted[seed] += 1
            assert breaker.stats().probes_in_flight <= 1

    run_threads(worker)
    assert counted == [calls] * THREADS
    transitions = journal.events(BreakerTransition)
    check_chain(transitions, manual=True)
    assert {e.to_state for e in transitions} >= {"open", "forced_open", "disabled"}
