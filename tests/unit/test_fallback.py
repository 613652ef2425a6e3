"""Unit tests for fallback chains."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pytest_resilience.core.cancel import cancel_scope, deadline
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import Cancelled, DaemonUnavailable, FallbackError
from pytest_resilience.core.events import FallbackUsed
from pytest_resilience.core.fallback import Fallback, FallbackExhausted, FallbackStep
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.retry import result_is_empty as reject_empty
from pytest_resilience.core.retry import result_is_none as reject_none


class Recorder:
    """A step that records its calls and answers (or raises) what it is told."""

    def __init__(self, answer: Any = None, raises: BaseException | None = None) -> None:
        self.answer = answer
        self.raises = raises
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((*args, *sorted(kwargs.items())))
        if self.raises is not None:
            raise self.raises
        return self.answer


def refused() -> Recorder:
    return Recorder(raises=DaemonUnavailable("refused"))


def chain(*steps: Any, journal: Journal | None = None, **kwargs: Any) -> Fallback:
    kwargs.setdefault("on", DaemonUnavailable)
    return Fallback("answer", steps, clock=VirtualClock(5.0), journal=journal, **kwargs)


def test_first_step_answers_and_records_nothing() -> None:
    journal = Journal()
    first, second = Recorder("a"), Recorder("b")
    assert chain(("first", first), ("second", second), journal=journal)("p", 1) == "a"
    assert first.calls == [("p", 1)]
    assert second.calls == []
    assert journal.events() == []


def test_later_step_answers_and_the_journal_says_why_earlier_ones_did_not() -> None:
    journal = Journal()
    fb = chain(
        ("daemon", refused()),
        ("direct", Recorder(None)),
        ("static", Recorder("sorry")),
        journal=journal,
        reject=reject_none,
    )
    assert fb("prompt") == "sorry"
    assert journal.events() == [
        FallbackUsed(
            time=5.0,
            source="answer",
            step="static",
            index=2,
            after=("daemon: DaemonUnavailable: refused", "direct: result None"),
        )
    ]


def test_keyword_arguments_are_passed_to_every_step() -> None:
    first, second = refused(), Recorder("ok")
    fb = chain(("a", first), ("b", second))
    assert fb(prompt="x") == "ok"
    assert first.calls == second.calls == [(("prompt", "x"),)]


def test_every_step_failing_raises_fallback_error_chained_from_the_last_exception() -> None:
    journal = Journal()
    last = DaemonUnavailable("still down")
    fb = chain(
        ("a", refused()),
        ("b", Recorder("")),
        ("c", Recorder(raises=last)),
        journal=journal,
        reject=reject_empty,
    )
    with pytest.raises(FallbackError) as info:
        fb()
    error = info.value
    assert error.chain == "answer"
    assert [name for name, _ in error.failures] == ["a", "b", "c"]
    assert isinstance(error.failures[0][1], DaemonUnavailable)
    assert error.failures[1][1] is None
    assert error.failures[2][1] is last
    assert error.__cause__ is last
    assert "a: DaemonUnavailable, b: rejected result, c: DaemonUnavailable" in str(error)
    assert journal.events() == [
        FallbackExhausted(
            time=5.0,
            source="answer",
            failures=(
                "a: DaemonUnavailable: refused",
                "b: result ''",
                "c: DaemonUnavailable: still down",
            ),
        )
    ]
    assert journal.events(FallbackUsed) == []


def test_a_rejected_last_step_still_chains_the_last_exception_seen() -> None:
    first = refused()
    fb = chain(("a", first), ("b", Recorder(None)), reject=reject_none)
    with pytest.raises(FallbackError) as info:
        fb()
    assert info.value.__cause__ is first.raises


def test_an_exception_outside_on_is_reraised_at_once() -> None:
    later = Recorder("never")
    fb = chain(("a", Recorder(raises=KeyError("bug"))), ("b", later))
    with pytest.raises(KeyError, match="bug"):
        fb()
    assert later.calls == []


def test_a_step_can_override_the_chain_filters() -> None:
    fb = chain(
        FallbackStep("strict", Recorder(raises=ValueError("bad")), on=ValueError),
        FallbackStep("picky", Recorder([]), reject=reject_empty),
        ("loose", Recorder([])),
    )
    assert fb() == []


def test_on_accepts_a_predicate() -> None:
    fb = chain(
        ("a", Recorder(raises=RuntimeError("overloaded"))),
        ("b", Recorder("ok")),
        on=lambda exc: "overloaded" in str(exc),
    )
    assert fb() == "ok"


def test_long_rejected_results_are_shortened_in_the_reason() -> None:
    journal = Journal()
    fb = chain(
        ("a", Recorder("x" * 100)),
        ("b", Recorder("ok")),
        journal=journal,
        reject=lambda r: len(r) > 10,
    )
    fb()
    (event,) = journal.events(FallbackUsed)
    assert event.after == ("a: result '" + "x" * 36 + "...",)  # 40 characters of repr


def test_exception_without_message_is_named_alone() -> None:
    journal = Journal()
    chain(("a", Recorder(raises=DaemonUnavailable())), ("b", Recorder(1)), journal=journal)()
    assert journal.events(FallbackUsed)[0].after == ("a: DaemonUnavailable",)


def test_bad_chains_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        Fallback("x", [], on=ValueError)
    with pytest.raises(ValueError, match="duplicate"):
        Fallback("x", [("a", str), ("a", repr)], on=ValueError)
    with pytest.raises(TypeError, match="on="):
        Fallback("x", [("a", str)], on=(ValueError, "nope"))  # type: ignore[arg-type]


def test_steps_lists_the_names() -> None:
    fb = chain(("daemon", str), FallbackStep("direct", repr))
    assert fb.steps == ("daemon", "direct")
    assert "daemon" in repr(fb)


def test_sync_call_refuses_an_async_step() -> None:
    async def step() -> str:
        return "x"

    with pytest.raises(TypeError, match="acall"):
        chain(("a", step))()


def test_cancelled_scope_stops_the_chain_between_steps() -> None:
    later = Recorder("never")
    with cancel_scope(clock=VirtualClock()) as scope:

        def cancel_then_fail() -> None:
            scope.cancel("shutting down")
            raise DaemonUnavailable("refused")

        with pytest.raises(Cancelled, match="shutting down"):
            chain(("a", cancel_then_fail), ("b", later))()
    assert later.calls == []


def test_expired_deadline_stops_the_chain_between_steps() -> None:
    clock = VirtualClock()
    later = Recorder("never")

    def slow_failure() -> None:
        clock.advance(2.0)
        raise DaemonUnavailable("refused")

    with deadline(1.0, clock=clock), pytest.raises(TimeoutError):
        chain(("a", slow_failure), ("b", later))()
    assert later.calls == []


def test_acall_mixes_sync_and_async_steps() -> None:
    journal = Journal()

    async def down(prompt: str) -> str:
        await asyncio.sleep(0)
        raise DaemonUnavailable("refused")

    async def empty(prompt: str) -> str:
        return ""

    async def direct(prompt: str) -> str:
        return prompt.upper()

    fb = chain(
        ("daemon", down),
        ("cache", empty),
        ("direct", direct),
        ("static", lambda prompt: "static"),
        journal=journal,
        reject=reject_empty,
    )
    assert asyncio.run(fb.acall("hi")) == "HI"
    assert journal.events() == [
        FallbackUsed(
            time=5.0,
            source="answer",
            step="direct",
            index=2,
            after=("daemon: DaemonUnavailable: refused", "cache: result ''"),
        )
    ]


def test_acall_exhausted_and_foreign_exceptions() -> None:
    async def down() -> None:
        raise DaemonUnavailable("refused")

    async def bug() -> None:
        raise KeyError("bug")

    with pytest.raises(FallbackError) as info:
        asyncio.run(chain(("a", down), ("b", lambda: None), reject=reject_none).acall())
    assert isinstance(info.value.__cause__, DaemonUnavailable)
    with pytest.raises(KeyError):
        asyncio.run(chain(("a", bug), ("b", lambda: 1)).acall())
