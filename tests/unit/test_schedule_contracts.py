"""Contracts of faults.schedule a user can see: defaults, messages, ``repr``, ``spent`` and
what a replayed journal fires."""

from __future__ import annotations

import pytest

from faults.parser import parse
from faults.schedule import Schedule, derive_rng, schedules
from faults.spec import Term

PROBABILISTIC = "llama.generate=50%none"


def draws(s: Schedule, calls: int) -> list[int]:
    """The call numbers on which ``s`` fires, over ``calls`` calls."""
    return [n for n in range(1, calls + 1) if s.decide() is not None]


def reference(text: str, seed: int | str, scope: str) -> list[int]:
    (entry,) = parse(text).entries
    rng = derive_rng(seed, scope, str(entry.site))
    return draws(Schedule(entry.chain, rng=rng, site=str(entry.site)), 64)


# ----------------------------------------------------------------------------- defaults


def test_schedules_default_to_seed_zero_and_an_empty_scope() -> None:
    (s,) = schedules(parse(PROBABILISTIC)).values()
    expected = reference(PROBABILISTIC, 0, "")
    assert draws(s, 64) == expected
    # The defaults matter: another seed or scope draws differently.
    assert expected != reference(PROBABILISTIC, 1, "")
    assert expected != reference(PROBABILISTIC, 0, "XXXX")


def test_for_entry_defaults_to_seed_zero_and_an_empty_scope() -> None:
    (entry,) = parse(PROBABILISTIC).entries
    assert draws(Schedule.for_entry(entry), 64) == reference(PROBABILISTIC, 0, "")


def test_a_schedule_without_a_site_shows_an_empty_site_in_its_repr() -> None:
    (entry,) = parse("llama.generate=2*none").entries
    assert repr(Schedule(entry.chain)) == "<Schedule =2*none calls=0 fired=0>"


def test_a_probabilistic_chain_without_rng_is_refused_with_a_clear_message() -> None:
    (entry,) = parse(PROBABILISTIC).entries
    with pytest.raises(ValueError, match=r"^a chain with a probabilistic term needs a seeded rng$"):
        Schedule(entry.chain)


# ------------------------------------------------------------------------------ replaying


def test_a_replayed_schedule_keeps_its_site_name() -> None:
    s = Schedule.replaying([(2, Term("none"))], site="llama.generate")
    assert repr(s) == "<Schedule llama.generate=@2none calls=0 fired=0>"


def test_a_replayed_at_and_after_term_fires_only_on_its_recorded_call() -> None:
    (entry,) = parse("llama.generate=@2+none").entries
    (term,) = entry.chain
    s = Schedule.replaying([(3, term)])
    assert draws(s, 6) == [3]


# -------------------------------------------------------------------- skipping and spent


def test_a_term_waiting_for_its_call_lets_the_next_term_fire() -> None:
    (entry,) = parse("llama.generate=@3none->timeout").entries
    s = Schedule(entry.chain)
    decisions = [s.decide() for _ in range(3)]
    assert [(d.term.kind, d.index) if d else None for d in decisions] == [
        ("timeout", 1),
        ("timeout", 1),
        ("none", 0),
    ]


def test_a_schedule_is_spent_once_its_only_call_has_passed() -> None:
    (entry,) = parse("llama.generate=@1none").entries
    s = Schedule(entry.chain)
    assert s.decide() is not None
    assert s.decide() is None
    assert s.spent


def test_a_schedule_is_spent_when_its_count_is_used_and_later_terms_are_past() -> None:
    (entry,) = parse("llama.generate=1*none->@1timeout").entries
    s = Schedule(entry.chain)
    d = s.decide()
    assert d is not None
    assert d.term.kind == "none"
    assert s.spent


def test_a_schedule_is_spent_when_an_off_from_the_next_call_on_is_all_that_is_left() -> None:
    (entry,) = parse("llama.generate=1*none->@2+off").entries
    s = Schedule(entry.chain)
    assert s.decide() is not None
    assert s.spent
    assert [s.decide() for _ in range(3)] == [None, None, None]
