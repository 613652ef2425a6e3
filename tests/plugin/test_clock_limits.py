"""A retry library's own time limit ends its retries at the same point on the test's clock
as it would in production: tenacity's ``stop_after_delay``, stamina's ``timeout`` and
backoff's ``max_time`` are measured on the clock the library sleeps on."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import backoff
import pytest
import stamina
import tenacity

if TYPE_CHECKING:
    from pytest_resilience.plugin.fixtures import TestClock


class Refused:
    """Counts its calls; every one is refused."""

    def __init__(self) -> None:
        self.calls = 0

    def refused(self) -> None:
        self.calls += 1
        raise ConnectionError("refused")


def test_tenacity_stops_after_its_delay_on_the_clock(clock: TestClock) -> None:
    call = Refused()
    ask = tenacity.retry(
        stop=tenacity.stop_after_delay(45) | tenacity.stop_after_attempt(20),
        wait=tenacity.wait_fixed(10),
        reraise=True,
    )(call.refused)
    with pytest.raises(ConnectionError):
        ask()
    # attempts at 0, 10, 20, 30, 40 and 50 s: 50 s is past the limit, so no seventh
    assert call.calls == 6
    assert clock.now() == 50


def test_stamina_stops_at_its_timeout_on_the_clock(clock: TestClock) -> None:
    call = Refused()
    ask = stamina.retry(
        on=ConnectionError, attempts=20, timeout=45, wait_initial=10, wait_jitter=0, wait_exp_base=1
    )(call.refused)
    with pytest.raises(ConnectionError):
        ask()
    assert call.calls < 20  # the timeout ended it, not the attempts
    assert 40 <= clock.now() <= 50


@pytest.mark.virtual_time
@pytest.mark.asyncio
async def test_stamina_async_stops_at_its_timeout_on_the_clock(clock: TestClock) -> None:
    call = Refused()

    @stamina.retry(
        on=ConnectionError, attempts=20, timeout=45, wait_initial=10, wait_jitter=0, wait_exp_base=1
    )
    async def ask() -> None:
        await asyncio.sleep(0)
        call.refused()

    with pytest.raises(ConnectionError):
        await ask()
    assert call.calls < 20
    assert 40 <= clock.now() <= 50


def test_backoff_stops_at_its_max_time_on_the_clock(clock: TestClock) -> None:
    call = Refused()
    ask = backoff.on_exception(
        backoff.constant, ConnectionError, interval=10, jitter=None, max_time=45, max_tries=20
    )(call.refused)
    with pytest.raises(ConnectionError):
        ask()
    assert call.calls < 20
    assert 40 <= clock.now() <= 50
