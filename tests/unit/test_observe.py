"""The application's own reports (pytest_resilience.core.app), the watch that routes them and the
retry libraries' seams (faults.observe), and the assertions and summary that read them.

The retries of the real libraries, end to end, are in tests/integration/test_observe_*.py;
here: what is recorded where, what is put back, and the checks that fail loudly when a
library's internals that a seam relies on move.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import logging
import re
import threading
from typing import Any

import backoff
import backoff._async
import backoff._sync
import pytest
import stamina
import stamina.instrumentation
import tenacity

import faults.observe
from faults.observe import seams
from pytest_resilience.core import app
from pytest_resilience.core.analytics import summarize
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.events import (
    AppRetry,
    AttemptFailed,
    Event,
    FallbackUsed,
    RetryScheduled,
    event_type,
)
from pytest_resilience.core.journal import Journal, format_event
from pytest_resilience.plugin.assertions import assert_fell_back, assert_retried


def retry(
    t: float, source: str, attempt: int, *, library: str = "tenacity", error: str = "E: x"
) -> AppRetry:
    return AppRetry(
        time=t,
        source=source,
        library=library,
        attempt=attempt,
        delay=1.0,
        error=error,
        category="connection",
    )


def journal_of(*events: Event) -> Journal:
    journal = Journal()
    for event in events:
        journal.append(event)
    return journal


@pytest.fixture
def observed() -> Any:
    """An open observation of a fresh journal on a VirtualClock at 5.0; closed after."""
    observation = app.Observation(Journal(), clock=VirtualClock(5.0)).open()
    yield observation
    observation.close()


# ------------------------------------------------------------------------ the event type


def test_app_retry_is_registered_and_reads_like_a_core_retry() -> None:
    assert event_type("app.retry") is AppRetry
    event = retry(1.5, "myapp.llm.ask", 2, error="ConnectionError: refused")
    assert event.name == "myapp.llm.ask"
    assert format_event(event) == (
        "     1.500s app.retry [myapp.llm.ask] library='tenacity' attempt=2 delay=1.0 "
        "error='ConnectionError: refused' category='connection'"
    )


# ------------------------------------------------------------ reports outside any watch


def test_reports_are_no_ops_when_nothing_observes() -> None:
    assert app.current() is None
    app.fell_back("canned", after=ConnectionError("down"))
    app.retried("loop", attempt=1, delay=1.0, error=ConnectionError("down"))

    @app.fallback_point
    def canned() -> str:
        return "canned"

    assert canned() == "canned"
    assert canned.__name__ == "canned"


# ---------------------------------------------------------------------- the fallbacks


def test_fell_back_records_the_exception_being_handled(observed: app.Observation) -> None:
    try:
        raise ConnectionError("refused")
    except ConnectionError:
        app.fell_back("canned")
    app.fell_back("cache", after="stale", source="answer")
    app.fell_back("static", after=TimeoutError())
    assert observed.journal.events() == [
        FallbackUsed(
            time=5.0, source="app", step="canned", index=1, after=("ConnectionError: refused",)
        ),
        FallbackUsed(time=5.0, source="answer", step="cache", index=1, after=("stale",)),
        FallbackUsed(time=5.0, source="app", step="static", index=1, after=("TimeoutError",)),
    ]
    assert_fell_back(observed.journal, to="canned", error=ConnectionError)
    assert_fell_back(observed.journal, times=2, source="app")
    assert summarize(observed.journal).recovered_by_fallback == 3


def test_fallback_point_records_each_answer_after_the_error_handled(
    observed: app.Observation,
) -> None:
    @app.fallback_point("canned")
    def canned(prompt: str) -> str:
        return f"canned {prompt}"

    @app.fallback_point(source="answer")
    def broken() -> str:
        raise ValueError("no canned answer either")

    try:
        raise ConnectionError("refused")
    except ConnectionError:
        assert canned("hi") == "canned hi"
        with pytest.raises(ValueError, match="either"):
            broken()  # a fallback that raises did not answer: nothing recorded
    assert canned("again") == "canned again"  # outside any except: no reason known
    assert [(e.step, e.source, e.after) for e in observed.journal.events(FallbackUsed)] == [
        ("canned", "app", ("ConnectionError: refused",)),
        ("canned", "app", ()),
    ]


def test_fallback_point_on_a_coroutine_function(observed: app.Observation) -> None:
    @app.fallback_point
    async def cached(prompt: str) -> str:
        await asyncio.sleep(0)
        return f"cached {prompt}"

    async def answer() -> str:
        try:
            raise TimeoutError("slow")
        except TimeoutError:
            return await cached("hi")

    assert inspect.iscoroutinefunction(cached)
    assert asyncio.run(answer()) == "cached hi"  # asyncio.run copies the context
    assert_fell_back(observed.journal, to="cached", times=1, error="slow")


def test_fallback_point_refuses_what_is_neither_a_name_nor_a_function() -> None:
    with pytest.raises(TypeError, match="a name or a function"):
        app.fallback_point(3)  # type: ignore[call-overload]


# ------------------------------------------------------------- a retry loop of its own


def test_retried_records_an_app_retry(observed: app.Observation) -> None:
    app.retried("myapp.ask", attempt=1, delay=0.5, error=ConnectionError("refused"))
    app.retried("myapp.ask", attempt=2, delay=1.0, result=None)
    assert observed.journal.events() == [
        AppRetry(
            time=5.0,
            source="myapp.ask",
            library="app",
            attempt=1,
            delay=0.5,
            error="ConnectionError: refused",
            category="connection",
        ),
        AppRetry(
            time=5.0,
            source="myapp.ask",
            library="app",
            attempt=2,
            delay=1.0,
            error="result: None",
            category="result",
        ),
    ]
    assert_retried(observed.journal, times=2, name="ask", library="app")


def test_describe_shows_what_a_tenacity_retry_error_wraps() -> None:
    @tenacity.retry(stop=tenacity.stop_after_attempt(1))
    def fails() -> None:
        raise ConnectionError("refused\nmore detail")

    with pytest.raises(tenacity.RetryError) as caught:
        fails()
    assert app.describe(caught.value) == "RetryError: ConnectionError: refused"
    assert app.describe(KeyError()) == "KeyError"


# ------------------------------------------------------------------- where events go


def test_observations_nest_and_close_in_any_order() -> None:
    outer = app.Observation(Journal()).open()
    inner = app.Observation(Journal()).open()
    try:
        assert app.current() is inner
        with pytest.raises(RuntimeError, match="already open"):
            inner.open()
        outer.close()  # out of order: allowed
        assert app.current() is inner
        outer.close()  # idempotent
    finally:
        inner.close()
        outer.close()
    assert app.current() is None


def test_the_observation_of_this_context_wins_else_the_last_opened() -> None:
    main = app.Observation(Journal()).open()
    seen: dict[str, app.Observation | None] = {}
    opened = threading.Event()
    done = threading.Event()

    def other_test() -> None:  # a second watch, opened in another thread's context
        with app.Observation(Journal()) as mine:
            seen["own thread"] = app.current()
            assert seen["own thread"] is mine
            opened.set()
            done.wait(10)

    def app_worker() -> None:  # a thread the application started: no context of its own
        seen["bare thread"] = app.current()

    thread = threading.Thread(target=other_test)
    thread.start()
    try:
        assert opened.wait(10)
        assert app.current() is main  # this context's observation, not the last opened
        worker = threading.Thread(target=app_worker)
        worker.start()
        worker.join()
        assert seen["bare thread"] is not main  # the one opened last, in the other thread
        assert seen["bare thread"] is seen["own thread"]
        copied = contextvars.copy_context()
        assert copied.run(app.current) is main
    finally:
        done.set()
        thread.join()
        main.close()


def test_an_observation_may_take_only_some_libraries() -> None:
    with app.Observation(Journal(), libraries=["stamina"]) as observation:
        assert app.current("stamina") is observation
        assert app.current("tenacity") is None
        assert app.current("app") is observation  # the app's own reports always


# --------------------------------------------------------------- watch: put back exactly


def _hooked_state() -> dict[str, object]:
    """Every object the seams replace, by identity."""
    logger = logging.getLogger(seams.OPENAI_LOGGER)
    return {
        "tenacity": tenacity.BaseRetrying.__dict__["iter"],
        "tenacity.async": tenacity.AsyncRetrying.__dict__["iter"],
        "backoff": backoff._sync._call_handlers,
        "backoff.async": backoff._async._call_handlers,
        "stamina": stamina.instrumentation.get_on_retry_hooks(),
        "openai.level": logger.level,
        "openai.filters": list(logger.filters),
    }


def test_unwatch_puts_every_hooked_object_back() -> None:
    before = _hooked_state()
    journal = Journal()
    watch = faults.observe.watch(journal)
    try:
        assert watch.observed == faults.observe.LIBRARIES
        assert watch.skipped == {}
        during = _hooked_state()
        changed = sorted(k for k in before if during[k] != before[k])
        # every seam is in place (openai's level only if it was above INFO: --log-level)
        assert sorted(set(changed) | {"openai.level"}) == sorted(before)
        assert tenacity.BaseRetrying.iter.__wrapped__ is before["tenacity"]  # type: ignore[attr-defined]
    finally:
        faults.observe.unwatch(watch)
    assert _hooked_state() == before
    assert watch.closed
    watch.close()  # idempotent
    assert journal.events() == []  # hooking records nothing


def test_nested_watches_hook_once_and_the_last_one_puts_back() -> None:
    before = _hooked_state()
    outer = faults.observe.watch(Journal(), libraries=["tenacity"])
    hooked = tenacity.BaseRetrying.__dict__["iter"]
    inner = faults.observe.watch(Journal())
    try:
        assert tenacity.BaseRetrying.__dict__["iter"] is hooked  # not wrapped twice
        outer.close()  # out of order: tenacity stays hooked for the inner watch
        assert tenacity.BaseRetrying.__dict__["iter"] is hooked
    finally:
        inner.close()
        outer.close()
    assert _hooked_state() == before


def test_watch_refuses_a_library_it_has_no_seam_for() -> None:
    with pytest.raises(ValueError, match="no seam for 'retrying'; known: tenacity, stamina"):
        faults.observe.watch(Journal(), libraries=["retrying"])


def test_a_hook_replaced_while_watched_is_reported_at_close() -> None:
    original = tenacity.BaseRetrying.__dict__["iter"]
    watch = faults.observe.watch(Journal(), libraries=["tenacity", "backoff"])
    hooked = tenacity.BaseRetrying.__dict__["iter"]
    tenacity.BaseRetrying.iter = original  # type: ignore[method-assign]  # someone else's patch
    try:
        with pytest.raises(RuntimeError, match=r"tenacity: .*BaseRetrying\.iter was replaced"):
            watch.close()
        assert watch.closed
        assert backoff._sync._call_handlers.__name__ == "_call_handlers"
        assert not hasattr(backoff._sync._call_handlers, "__wrapped__")  # the rest is back
        assert tenacity.AsyncRetrying.__dict__["iter"] is not hooked
    finally:
        tenacity.BaseRetrying.iter = original  # type: ignore[method-assign]


def test_stamina_hooks_set_by_the_app_while_watched_are_kept() -> None:
    before = stamina.instrumentation.get_on_retry_hooks()

    def mine(details: stamina.instrumentation.RetryDetails) -> None:
        pass

    watch = faults.observe.watch(Journal(), libraries=["stamina"])
    try:
        hooks = stamina.instrumentation.get_on_retry_hooks()
        stamina.instrumentation.set_on_retry_hooks((*hooks, mine))
    finally:
        watch.close()
    try:
        assert stamina.instrumentation.get_on_retry_hooks() == (*before, mine)
    finally:
        stamina.instrumentation.set_on_retry_hooks(before)


def test_watch_clock_may_be_set_while_open() -> None:
    journal = Journal()
    with faults.observe.watch(journal, libraries=["tenacity"]) as watch:
        watch.clock = VirtualClock(42.0)
        app.retried("loop", attempt=1, delay=0.0, error=OSError("x"))
    assert [e.time for e in journal] == [42.0]
    assert repr(watch) == "<Watch closed>"


# ------------------------------------------------------- the libraries' internals moved?


@pytest.mark.parametrize("library", faults.observe.LIBRARIES)
def test_the_internals_each_seam_relies_on_are_there(library: str) -> None:
    # Fails when a library's new version moved what faults/observe/seams.py hooks: that
    # library's retries would go unrecorded (watch.skipped says why). Fix the seam.
    seam = faults.observe.seams.SEAMS[library]
    assert seam.check() is None
    assert faults.observe.check(library) is None


def test_openai_internals_are_checked_once_imported() -> None:
    import openai._base_client  # noqa: PLC0415 - the check reads its source once imported

    assert openai._base_client.log is logging.getLogger(seams.OPENAI_LOGGER)
    assert seams.SEAMS["openai"].check() is None


def test_stamina_retries_are_told_apart_from_tenacity_ones() -> None:
    # stamina retries through tenacity: its own Retrying objects are skipped by the tenacity
    # seam (stamina's hook reports them), recognised by the module of their before_sleep.
    from stamina import _config, _core  # noqa: PLC0415

    before_sleep = _core._make_before_sleep("n", _config.CONFIG, (), {}, [])
    assert before_sleep.__module__ == "stamina._core"
    assert seams._owned_by_stamina(tenacity.Retrying(before_sleep=before_sleep))
    assert not seams._owned_by_stamina(tenacity.Retrying())
    assert not seams._owned_by_stamina(tenacity.Retrying(before_sleep=lambda rs: None))


def test_a_seam_whose_internals_moved_is_skipped_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff._sync, "_call_handlers", lambda *a, **k: None)
    faults.observe._checked.pop("backoff", None)
    try:
        with faults.observe.watch(Journal(), libraries=["backoff", "tenacity"]) as watch:
            assert watch.observed == ("tenacity",)
            assert "backoff._sync._call_handlers takes other arguments" in watch.skipped["backoff"]
    finally:
        faults.observe._checked.pop("backoff", None)


def test_the_ollama_client_has_no_retries_of_its_own() -> None:
    # If ollama grows retries, they need a seam in faults/observe/seams.py.
    client = importlib.import_module("ollama._client")  # (ollama._client is a Client)
    source = inspect.getsource(client)
    assert re.findall(r"retr(?:y|ies)", source, flags=re.IGNORECASE) == []


# ------------------------------------------------------------------------- assertions


def test_assert_retried_counts_the_core_and_the_app_retries() -> None:
    journal = journal_of(
        AttemptFailed(
            time=0.0, source="generate", attempt=1, error="TimeoutError: slow", category="timeout"
        ),
        RetryScheduled(time=0.0, source="generate", attempt=2, delay=1.0),
        retry(1.0, "myapp.llm.ask", 1, error="ConnectionError: refused"),
        retry(2.0, "myapp.llm.ask", 2, error="ConnectionError: refused"),
        retry(3.0, "myapp.llm.Client.ask", 1, library="stamina", error="OSError: x"),
    )
    assert_retried(journal, times=4)
    assert_retried(journal, 1, source="generate")  # the existing calls keep working
    assert_retried(journal, times=1, library="pytest_resilience", error=TimeoutError)
    assert_retried(journal, times=2, name="ask", library="tenacity", error=ConnectionError)
    assert_retried(journal, times=3, name="ask")  # "ask" names every ...ask
    assert_retried(journal, times=1, name="Client.ask")
    assert_retried(journal, times=2, source="myapp.llm.ask")
    assert_retried(journal, times=3, error=(ConnectionError, "OSError"))
    assert_retried(journal, times=2, error="refused")  # a piece of the message
    assert_retried(journal, times=0, error=ConnectionRefusedError)  # the type, by name
    assert_retried(journal, times=0, name="sk")  # whole dotted parts only


def test_assert_retried_says_what_it_saw() -> None:
    journal = journal_of(
        retry(1.0, "myapp.ask", 1, error="TimeoutError: slow"),
        retry(2.0, "myapp.ask", 2, error="TimeoutError: slow"),
    )
    with pytest.raises(
        AssertionError,
        match=re.escape(
            "expected 2 retries of 'ask' with tenacity after ConnectionError, got 0 "
            "(retries seen: tenacity myapp.ask after TimeoutError x2)\ntimeline:\n"
        ),
    ):
        assert_retried(journal, times=2, name="ask", library="tenacity", error=ConnectionError)
    with pytest.raises(AssertionError, match=r"expected 2 retries by 'x', got 0\ntimeline"):
        assert_retried(journal, 2, source="x")  # the old message, unchanged


def test_assert_fell_back_filters_by_error() -> None:
    journal = journal_of(
        FallbackUsed(
            time=1.0,
            source="app",
            step="canned",
            index=1,
            after=("RetryError: ConnectionError: refused",),
        ),
    )
    assert_fell_back(journal, to="canned", error="ConnectionError")
    with pytest.raises(AssertionError, match=r"to 'canned' after TimeoutError, got 0"):
        assert_fell_back(journal, to="canned", error=TimeoutError)


# ---------------------------------------------------------------------------- summary


def test_the_summary_counts_the_app_retries() -> None:
    journal = journal_of(
        RetryScheduled(time=0.0, source="generate", attempt=2, delay=1.0),
        retry(1.0, "myapp.ask", 1),
        retry(2.0, "myapp.ask", 2),
        retry(3.0, "myapp.ask", 1, library="stamina"),
    )
    summary = summarize(journal)
    assert summary.retries == 4
    assert summary.app_retries == {"tenacity": 2, "stamina": 1}
    assert summary.errors_by_category == {"connection": 3}
    assert summary.recovered_by_retry == 0  # the libraries do not say when they give up
    assert "retries scheduled  4 (1 by stamina, 2 by tenacity)" in str(summary)
    assert summarize(journal_of(journal.events()[0])).app_retries == {}
