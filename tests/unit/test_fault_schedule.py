"""Failpoint semantics (faults.schedule): examples, fail-rs rules, a reference model, threads."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faults.parser import parse
from faults.schedule import Decision, Schedule, derive_rng, schedules
from faults.spec import Site, Term


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


def test_call_numbers_are_unique_across_threads_real_time() -> None:
    s = schedule("llama.generate=@1+none")
    seen: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [d.call for d in (s.decide() for _ in range(500)) if d is not None]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(1, 2001))
    assert (s.calls, s.fired) == (2000, 2000)


def test_a_count_is_exact_across_threads_real_time() -> None:
    s = schedule("llama.generate=7*none->@1000+oom")
    found: list[Decision | None] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [s.decide() for _ in range(300)]
        with lock:
            found.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fired = [d for d in found if d is not None]
    assert sum(d.term.kind == "none" for d in fired) == 7
    assert sorted(d.call for d in fired if d.term.kind == "oom") == list(range(1000, 1201))
    assert s.calls == 1200


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
    schedule = Schedule.for_entry(parse("llama.generate=@2none->1*corrupt").entries[0])
    first = [d and (d.term.kind, d.call) for d in (schedule.decide() for _ in range(4))]
    schedule.restart()
    again = [d and (d.term.kind, d.call) for d in (schedule.decide() for _ in range(4))]
    assert first == again == [("corrupt", 1), ("none", 2), None, None]
    assert (schedule.calls, schedule.fired) == (8, 4)


def test_restart_with_the_same_generator_draws_the_same_chances() -> None:
    entry = parse("llama.generate=50%none").entries[0]
    schedule = Schedule.for_entry(entry, seed=3, scope="t")
    first = [schedule.decide() is None for _ in range(20)]
    schedule.restart(derive_rng(3, "t", "llama.generate"))
    assert [schedule.decide() is None for _ in range(20)] == first
