"""Backoff at its edges: a zero base or cap, a cap of one second, the error for a bad jitter."""

from __future__ import annotations

import random

import pytest

from pytest_resilience.core.backoff import Backoff, Jitter


def test_an_unknown_jitter_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown jitter") as info:
        Backoff(jitter="gaussian")
    assert str(info.value) == (
        "unknown jitter 'gaussian'; known: none, full, equal, decorrelated, proportional"
    )


@pytest.mark.parametrize("n", [1, 2, 10_000])
def test_a_zero_base_waits_nothing_at_any_attempt(n: int) -> None:
    backoff = Backoff(base=0.0, factor=2.0, cap=30.0, jitter="none")
    assert backoff.exponential(n) == 0.0  # even where factor**(n-1) overflows
    assert backoff.delay(n, random.Random(0)) == 0.0


@pytest.mark.parametrize("jitter", [Jitter.NONE, Jitter.EQUAL])
def test_a_cap_of_one_second_is_a_cap_like_any_other(jitter: Jitter) -> None:
    backoff = Backoff(base=0.25, factor=2.0, cap=1.0, jitter=jitter)
    assert [backoff.exponential(n) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 1.0]
    delay = backoff.delay(4, random.Random(0))
    assert 0.5 <= delay <= 1.0  # none: d = 1; equal: d/2 + U(0, d/2)
    assert Backoff.fixed(1.0).delay(3, random.Random(0)) == 1.0


class LowRandom(random.Random):
    """``uniform(a, b)`` returns ``a``: the low edge of every jitter formula."""

    def uniform(self, a: float, b: float) -> float:
        return a


@pytest.mark.parametrize(
    ("jitter", "low"), [(Jitter.FULL, 0.0), (Jitter.EQUAL, 0.5), (Jitter.PROPORTIONAL, 0.8)]
)
def test_a_delay_of_exactly_one_second_is_jittered_too(jitter: Jitter, low: float) -> None:
    backoff = Backoff(base=1.0, factor=2.0, cap=30.0, jitter=jitter)
    assert backoff.exponential(1) == 1.0
    assert backoff.delay(1, LowRandom(0)) == pytest.approx(low)
