"""Failpoint semantics (faults.schedule): examples, fail-rs rules, a reference model, threads."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faults.parser import parse
from faults.schedule import Decision, Schedule, derive_rng, schedules
from faults.spec import Site, Term
from tests.unit.interleave import Gate, GatedCounter, parked, run_together, switching_often

if TYPE_CHECKING:
    import threading


def schedule(text: str, *, seed: int | str = 1234, scope: str = "test") -> Schedule:
    (entry,) = parse(text).entries
    return Schedule.for_entry(entry, seed=seed, scope=scope)


def kinds(s: Schedule, calls: int) -> list[str | None]:
    out: list[str | None] = []
    for n in range(1, calls + 1):
        d = s.decide()
        if d is not None:
            assert d.call == n
        out.append(None if d is None else d.term.kind)
    return out


class Scripted(random.Random):
    """A generator whose draws are given in advance; counts how many were taken."""

    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self.values = values
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return self.values.pop(0)


# ------------------------------------------------------------------ the documented examples


def test_two_none_then_normal() -> None:
    s = schedule("llama.generate=2*none")
    assert kinds(s, 5) == ["none", "none", None, None, None]
    assert (s.calls, s.fired, s.spent) == (5, 2, True)


def test_thirty_percent_timeouts_seeded() -> None:
    calls = 10_000
    s = schedule("llama.generate=30%timeout(30s)", seed=7)
    fired = [d.call for d in (s.decide() for _ in range(calls)) if d is not None]
    sigma = math.sqrt(calls * 0.3 * 0.7)
    assert abs(len(fired) - 0.3 * calls) < 5 * sigma
    assert s.fired == len(fired)
    again = schedule("llama.generate=30%timeout(30s)", seed=7)
    assert [d.call for d in (again.decide() for _ in range(calls)) if d is not None] == fired
    other = schedule("llama.generate=30%timeout(30s)", seed=7, scope="another test")
    assert [d.call for d in (other.decide() for _ in range(calls)) if d is not None] != fired


def test_first_stream_stalls() -> None:
    s = schedule("llama.stream=@1stall(after=5)")
    first = s.decide()
    assert first is not None
    assert first.term.arg("after") == 5
    assert kinds(s, 10) == [None] * 10
    assert s.spent


def test_first_model_load_fails() -> None:
    assert kinds(schedule("llama.load=1*oom"), 3) == ["oom", None, None]


def test_second_daemon_stream_is_lost() -> None:
    assert kinds(schedule("daemon.stream=@2lost(after=3)"), 4) == [None, "lost", None, None]


def test_three_raises_then_off() -> None:
    s = schedule("py:myapp.llm:Client.ask=3*raise(ConnectionError)->off")
    assert kinds(s, 6) == ["raise"] * 3 + [None] * 3
    assert (s.fired, s.spent) == (3, True)


# ---------------------------------------------------------------------- fail-rs rules


def test_a_failed_draw_keeps_the_count_and_tries_the_next_term() -> None:
    (entry,) = parse("llama.generate=50%1*raise(ValueError)->none").entries
    rng = Scripted([0.9, 0.1])
    s = Schedule(entry.chain, rng=rng)
    first, second, third = s.decide(), s.decide(), s.decide()
    assert first is not None
    assert (first.term.kind, first.index) == ("none", 1)  # draw failed: next term
    assert second is not None
    assert (second.term.kind, second.index) == ("raise", 0)  # count was still there
    assert third is not None
    assert third.term.kind == "none"
    assert rng.draws == 2  # a used-up term does not draw


def test_terms_that_do_not_match_the_call_number_do_not_draw() -> None:
    (entry,) = parse("llama.generate=50%@3none").entries
    rng = Scripted([0.1])
    s = Schedule(entry.chain, rng=rng)
    assert [s.decide() is not None for _ in range(4)] == [False, False, True, False]
    assert rng.draws == 1


def test_off_with_a_count_lets_calls_through_then_the_chain_goes_on() -> None:
    s = schedule("llama.generate=2*off->raise(ValueError)")
    assert kinds(s, 4) == [None, None, "raise", "raise"]
    assert s.fired == 2


def test_at_n_plus_with_a_count() -> None:
    assert kinds(schedule("llama.generate=2*@3+none"), 6) == [
        None,
        None,
        "none",
        "none",
        None,
        None,
    ]


def test_at_n_plus_without_a_count_fires_forever() -> None:
    s = schedule("llama.generate=@2+none->oom")
    assert kinds(s, 4) == ["oom", "none", "none", "none"]


def test_an_unconditional_term_hides_the_rest_of_the_chain() -> None:
    s = schedule("llama.generate=none->oom")
    assert kinds(s, 3) == ["none"] * 3


def test_zero_and_hundred_percent() -> None:
    assert kinds(schedule("llama.generate=0%none"), 50) == [None] * 50
    assert kinds(schedule("llama.generate=100%none"), 5) == ["none"] * 5


def test_no_rng_needed_without_a_probabilistic_term() -> None:
    (entry,) = parse("llama.generate=100%2*none->@4oom").entries
    s = Schedule(entry.chain)
    assert kinds(s, 5) == ["none", "none", None, "oom", None]


def test_a_probabilistic_term_needs_an_rng() -> None:
    (entry,) = parse("llama.generate=10%none").entries
    with pytest.raises(ValueError, match="seeded rng"):
        Schedule(entry.chain)


def test_an_empty_chain_passes_everything_through() -> None:
    s = Schedule(())
    assert (s.decide(), s.decide(), s.calls, s.fired, s.spent) == (None, None, 2, 0, True)


def test_replaying_fires_the_recorded_terms_at_the_recorded_calls() -> None:
    none, oom = Term("none", count=5, pct=10.0), Term("oom")
    s = Schedule.replaying([(4, oom), (2, none)], site="llama.generate")
    decisions = [s.decide() for _ in range(6)]
    assert [(d.call, d.term.kind) for d in decisions if d is not None] == [(2, "none"), (4, "oom")]
    assert s.spent


def test_schedules_for_a_spec_are_keyed_by_site() -> None:
    spec = parse("llama.load=oom;py:a:f=30%none")
    found = schedules(spec, seed=1, scope="t")
    assert set(found) == {Site("llama", "load"), Site("py", "a:f")}
    assert found[Site("llama", "load")].site == "llama.load"
    assert repr(found[Site("llama", "load")]) == "<Schedule llama.load=oom calls=0 fired=0>"


def test_repr_shows_the_chain_as_the_spec_writes_it() -> None:
    s = Schedule.replaying([(4, Term("oom")), (2, Term("none"))])
    assert s.site == ""
    assert repr(s) == "<Schedule =@2none->@4oom calls=0 fired=0>"
    s.decide()
    s.decide()
    assert repr(s) == "<Schedule =@2none->@4oom calls=2 fired=1>"


def test_decision_carries_the_term_call_and_index() -> None:
    s = schedule("llama.generate=@2none->@3oom")
    assert [s.decide() for _ in range(3)] == [
        None,
        Decision(Term("none", at=2), 2, 0),
        Decision(Term("oom", at=3), 3, 1),
    ]


# ------------------------------------------------------------------------- randomness


def test_derived_generators_do_not_depend_on_the_hash_seed() -> None:
    code = (
        "from faults.schedule import derive_rng; "
        "print(derive_rng(42, 'tests/test_x.py::test_y', 'llama.generate').random())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        ).stdout.strip()
        for hash_seed in ("0", "1", "random")
    }
    assert outputs == {repr(derive_rng(42, "tests/test_x.py::test_y", "llama.generate").random())}


def test_derived_generators_differ_by_seed_scope_and_site() -> None:
    draws = {
        derive_rng(seed, scope, site).random()
        for seed in (1, 2)
        for scope in ("a", "b")
        for site in ("llama.generate", "llama.chat")
    }
    assert len(draws) == 8


# ------------------------------------------------------------------------------ threads
#
# decide() takes no lock (see faults.schedule): a call takes its number, and a counted term
# each of its firings, with one atomic next() of a counter, and whatever it read before may
# be stale by then. The forced tests park one call inside decide(), at the counter the race
# is about, while the main thread decides on; the stress tests run four threads together.

THREADS = 4


def test_a_parked_call_keeps_its_number_and_its_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    # Call 1 parks just after taking its number. Calls 2-6 go on; call 2 finds @1 past and
    # prunes it from the chain. Call 1 read the chain before taking its number, so it still
    # has @1, and it fires it as call 1.
    s = schedule("llama.generate=@1none->oom")
    gate = Gate("in decide(), holding call number 1")
    monkeypatch.setattr(s, "_calls", GatedCounter(s._calls, gate, before=False))
    with parked(gate, s.decide, "call 1") as first:
        others = [s.decide() for _ in range(5)]
    assert [d and (d.term.kind, d.call) for d in others] == [("oom", n) for n in range(2, 7)]
    assert first.result() == Decision(Term("none", at=1), 1, 0)
    assert (s.calls, s.fired, s.spent) == (6, 6, False)


def test_a_call_parked_before_its_claim_does_not_fire_a_used_up_term(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Call 1 finds 3*none not used up and parks just before claiming a firing of it; calls
    # 2-4 take all three meanwhile. Call 1's claim is then the fourth: 3*none must not fire
    # again, and call 1 goes on to the next term.
    s = schedule("llama.generate=3*none->oom")
    counted = s._live[0]
    assert counted.claims is not None
    gate = Gate("in decide(), before claiming a firing of 3*none")
    monkeypatch.setattr(counted, "claims", GatedCounter(counted.claims, gate, before=True))
    with parked(gate, s.decide, "call 1") as first:
        others = [s.decide() for _ in range(4)]
    assert [d and (d.term.kind, d.call) for d in others] == [
        ("none", 2),
        ("none", 3),
        ("none", 4),
        ("oom", 5),
    ]
    assert first.result() == Decision(Term("oom"), 1, 1)
    assert (s.calls, s.fired) == (5, 5)


def test_call_numbers_are_unique_across_threads_real_time() -> None:
    s = schedule("llama.generate=@1+none")
    calls = 20_000  # per thread
    got: list[list[int]] = [[] for _ in range(THREADS)]

    def worker(index: int, start: threading.Barrier) -> None:
        mine = got[index]
        start.wait()
        for _ in range(calls):
            d = s.decide()
            assert d is not None
            mine.append(d.call)

    with switching_often():
        run_together(worker, THREADS)
    assert sorted(n for mine in got for n in mine) == list(range(1, THREADS * calls + 1))
    assert all(mine == sorted(mine) for mine in got)  # each thread's calls, in its order
    assert (s.calls, s.fired) == (THREADS * calls, THREADS * calls)
    # The threads really ran at the same time: some thread's numbers have gaps that the
    # others' calls filled meanwhile.
    assert any(mine != list(range(mine[0], mine[0] + calls)) for mine in got)


def test_a_count_is_exact_across_threads_real_time() -> None:
    rounds, per_thread = 300, 100
    (entry,) = parse("llama.generate=100*none->@351+oom").entries
    fresh = [Schedule(entry.chain) for _ in range(rounds)]
    seen: list[list[tuple[int, Decision | None]]] = [[] for _ in range(rounds)]

    def worker(index: int, start: threading.Barrier) -> None:
        for s, found in zip(fresh, seen, strict=True):
            start.wait()  # each round, a fresh schedule and the four threads together
            mine = [(index, s.decide()) for _ in range(per_thread)]
            found.extend(mine)

    with switching_often():
        run_together(worker, THREADS)
    for r, (s, found) in enumerate(zip(fresh, seen, strict=True)):
        fired = [d for _, d in found if d is not None]
        assert sum(d.term.kind == "none" for d in fired) == 100, f"round {r}"
        assert sorted(d.call for d in fired if d.term.kind == "oom") == list(range(351, 401))
        assert (s.calls, s.fired) == (400, 150)
    # The threads really ran at the same time: in some rounds, 100*none fired in more than
    # one thread.
    shared = [
        len({i for i, d in found if d is not None and d.term.kind == "none"}) > 1 for found in seen
    ]
    assert any(shared)


# -------------------------------------------------------------- against a reference model


def reference(chain: list[Term], calls: int, rng: random.Random) -> list[tuple[int, int] | None]:
    """The rules of the module docstring, done the slow obvious way: (index, call) or None."""
    used = [0] * len(chain)
    out: list[tuple[int, int] | None] = []
    for n in range(1, calls + 1):
        result = None
        for i, t in enumerate(chain):
            if t.at is not None and (n < t.at if t.at_and_after else n != t.at):
                continue
            if t.count is not None and used[i] >= t.count:
                continue
            if t.pct is not None and t.pct < 100 and not rng.random() < t.pct / 100:
                continue
            used[i] += 1
            result = None if t.kind == "off" else (i, n)
            break
        out.append(result)
    return out


terms = st.builds(
    Term,
    kind=st.sampled_from(["off", "none", "oom", "corrupt"]),
    pct=st.none() | st.sampled_from([0.0, 0.5, 30.0, 50.0, 99.9, 100.0]),
    count=st.none() | st.integers(1, 4),
    at=st.none() | st.integers(1, 8),
    at_and_after=st.booleans(),
)


@given(chain=st.lists(terms, min_size=1, max_size=5), calls=st.integers(0, 30), seed=st.integers())
@settings(max_examples=300, deadline=None)
def test_schedule_matches_the_reference_model(chain: list[Term], calls: int, seed: int) -> None:
    s = Schedule(chain, rng=random.Random(seed))
    got = []
    for _ in range(calls):
        d = s.decide()
        got.append(None if d is None else (d.index, d.call))
    assert got == reference(chain, calls, random.Random(seed))
    assert s.calls == calls
    assert s.fired == sum(g is not None for g in got)
    if s.spent:  # spent means nothing fires any more
        assert all(s.decide() is None for _ in range(10))


@given(pct=st.floats(1, 99), seed=st.integers(0, 2**32))
@settings(max_examples=30, deadline=None)
def test_observed_rate_is_within_bounds(pct: float, seed: int) -> None:
    calls = 2000
    s = Schedule([Term("none", pct=pct)], rng=random.Random(seed))
    fired = sum(s.decide() is not None for _ in range(calls))
    p = pct / 100
    assert abs(fired - calls * p) < 5 * math.sqrt(calls * p * (1 - p)) + 1


def test_restart_starts_the_chain_afresh_and_keeps_the_totals() -> None:
    schedule = Schedule.for_entry(parse("llama.generate=@1oom->@2none->1*corrupt").entries[0])
    first = [schedule.decide() for _ in range(4)]
    schedule.restart()
    again = [schedule.decide() for _ in range(4)]
    oom, none, corrupt = schedule.chain
    assert (
        first == again == [Decision(oom, 1, 0), Decision(none, 2, 1), Decision(corrupt, 3, 2), None]
    )
    assert (schedule.calls, schedule.fired) == (8, 6)


def test_restart_with_the_same_generator_draws_the_same_chances() -> None:
    entry = parse("llama.generate=50%none").entries[0]
    schedule = Schedule.for_entry(entry, seed=3, scope="t")
    first = [schedule.decide() is None for _ in range(20)]
    schedule.restart(derive_rng(3, "t", "llama.generate"))
    assert [schedule.decide() is None for _ in range(20)] == first
