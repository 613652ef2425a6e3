"""Edge cases of fallback chains: a step's own rules, reasons at their limits, messages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pytest_resilience.core.cache import ResponseCache
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import DaemonUnavailable, FallbackError
from pytest_resilience.core.events import FallbackUsed
from pytest_resilience.core.fallback import (
    CachedStep,
    Fallback,
    FallbackExhausted,
    FallbackStep,
)
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.retry import result_is_empty, result_is_none


def chain(*steps: Any, journal: Journal | None = None, **kwargs: Any) -> Fallback:
    kwargs.setdefault("on", DaemonUnavailable)
    return Fallback("answer", steps, clock=VirtualClock(5.0), journal=journal, **kwargs)


def test_a_step_reject_refuses_what_the_chain_accepts() -> None:
    journal = Journal()
    fb = chain(
        FallbackStep("picky", lambda: [], reject=result_is_empty),
        ("loose", lambda: "second"),
        journal=journal,
    )
    assert fb() == "second"
    assert journal.events(FallbackUsed)[0].after == ("picky: result []",)


def test_a_step_reject_replaces_the_chain_reject() -> None:
    fb = chain(
        FallbackStep("lenient", lambda: "", reject=result_is_none),
        ("strict", lambda: "second"),
        reject=result_is_empty,
    )
    assert fb() == ""  # the step's own predicate accepts "", whatever the chain says


def test_a_reason_of_exactly_the_limit_is_kept_whole() -> None:
    journal = Journal()
    exact = "x" * 38  # its repr is 40 characters: the limit
    fb = chain(
        ("a", lambda: exact),
        ("b", lambda: "y" * 39),  # repr of 41: shortened
        ("c", lambda: "ok"),
        journal=journal,
        reject=lambda r: r != "ok",
    )
    assert fb() == "ok"
    assert journal.events(FallbackUsed)[0].after == (
        f"a: result {exact!r}",
        "b: result '" + "y" * 36 + "...",
    )


def test_the_sync_call_tells_how_to_run_an_async_step() -> None:
    async def step() -> str:
        return "x"

    with pytest.raises(TypeError) as info:
        chain(("remote", step))()
    assert str(info.value) == (
        "step 'remote' of fallback chain 'answer' is async: use `await chain.acall(...)`"
    )


def test_acall_passes_keyword_arguments_to_every_step() -> None:
    seen: list[tuple[tuple[object, ...], dict[str, object]]] = []

    async def down(*args: object, **kwargs: object) -> str:
        seen.append((args, kwargs))
        raise DaemonUnavailable("refused")

    def static(*args: object, **kwargs: object) -> str:
        seen.append((args, kwargs))
        return "static"

    fb = chain(("daemon", down), ("static", static))
    assert asyncio.run(fb.acall("p", temperature=0.5)) == "static"
    assert seen == [(("p",), {"temperature": 0.5})] * 2


@pytest.mark.parametrize("run", ["sync", "async"])
def test_every_step_rejected_raises_without_a_cause(run: str) -> None:
    journal = Journal()
    fb = chain(("a", lambda: None), ("b", lambda: ""), journal=journal, reject=result_is_empty)
    with pytest.raises(FallbackError) as info:
        fb() if run == "sync" else asyncio.run(fb.acall())
    assert info.value.__cause__ is None
    assert info.value.failures == (("a", None), ("b", None))
    assert journal.events() == [
        FallbackExhausted(time=5.0, source="answer", failures=("a: result None", "b: result ''"))
    ]


# ------------------------------------------------------------------- the cached step


def test_the_cached_step_looks_up_by_the_keyword_arguments_too() -> None:
    cache = ResponseCache("answers", clock=VirtualClock())
    up = [True]

    def model(*, prompt: str) -> str:
        if not up[0]:
            raise DaemonUnavailable("down")
        return prompt.upper()

    answer = chain(("model", model), CachedStep(cache), ("static", lambda **_: "resting"))
    assert answer(prompt="hi") == "HI"
    up[0] = False
    assert answer(prompt="hi") == "HI"  # from the cache
    assert answer(prompt="other") == "resting"


def test_an_answer_from_the_cache_is_not_stored_again_so_it_still_ages() -> None:
    clock = VirtualClock()
    cache = ResponseCache("answers", clock=clock, max_age=10.0)
    up = [True]

    def model(prompt: str) -> str:
        if not up[0]:
            raise DaemonUnavailable("down")
        return "fresh"

    answer = Fallback(
        "answer",
        [("model", model), CachedStep(cache), ("static", lambda prompt: "resting")],
        on=DaemonUnavailable,
        clock=clock,
    )
    assert answer("hi") == "fresh"  # stored at 0
    up[0] = False
    clock.sleep(6.0)
    assert answer("hi") == "fresh"  # 6 s old: served, and not stored anew
    clock.sleep(6.0)
    assert answer("hi") == "resting"  # 12 s old: expired
