"""Injected async waits work under trio (anyio's trio backend too), on trio's own clock.

They used to fail with "no running event loop", even in real time. trio's ``MockClock``
with autojump makes them instant, as the virtual clock does under asyncio.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

import pytest

import faults
from pytest_resilience.core.clock import VirtualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

trio = pytest.importorskip("trio")
trio_testing = pytest.importorskip("trio.testing")


async def answer() -> str:
    return "ok"


async def chunks() -> AsyncIterator[str]:
    for chunk in ("a", "b", "c"):
        yield chunk


@pytest.fixture
def app() -> Iterator[types.ModuleType]:
    module = types.ModuleType("trio_app")
    module.answer = answer  # type: ignore[attr-defined]
    module.chunks = chunks  # type: ignore[attr-defined]
    sys.modules["trio_app"] = module
    yield module
    del sys.modules["trio_app"]


def _run(main: object) -> object:
    return trio.run(main, clock=trio_testing.MockClock(autojump_threshold=0))


def test_latency_and_timeout_wait_on_trios_clock(app: types.ModuleType) -> None:
    async def main() -> tuple[float, float, bool]:
        spec = "py:trio_app:answer=1*latency(30s)->1*timeout(1h)"
        with faults.inject(spec, clock=VirtualClock()):
            assert await app.answer() == "ok"
            after_latency = trio.current_time()
            with trio.move_on_after(60) as scope:  # the caller's own timeout ends the hang
                await app.answer()
        return after_latency, trio.current_time(), scope.cancelled_caught

    assert _run(main) == (30.0, 90.0, True)


def test_a_stall_in_an_async_stream_waits_on_trios_clock(app: types.ModuleType) -> None:
    async def main() -> tuple[list[str], float]:
        with faults.inject("py:trio_app:chunks=stall(after=1, for=5s)", clock=VirtualClock()):
            got = [chunk async for chunk in app.chunks()]
        return got, trio.current_time()

    assert _run(main) == (["a", "b", "c"], 5.0)
