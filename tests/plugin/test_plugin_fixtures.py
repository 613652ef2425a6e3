"""The plugin's fixtures as downstream suites use them (pytester, in process)."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

import faults  # noqa: F401 - loaded once here, so that pytester's runs do not reload it
import pytest_resilience.plugin.fixtures  # noqa: F401 - ditto

pytest_plugins = ["pytester"]

# Extension modules cannot be loaded twice in a process, and pytester unloads what its runs
# import: load them here, once.
for _name in ("numpy", "gguf", "llama_cpp", "httpcore", "httpx", "tenacity", "stamina", "backoff",
              "freezegun"):  # fmt: skip
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name)

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nasyncio_mode = strict\n"


@pytest.fixture
def ptr(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(
        target="def answer():\n    return 'ok'\n\nasync def aanswer():\n    return 'ok'\n"
    )
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:hypothesispytest", *args)


def test_faults_fixture_installs_for_the_test_and_cleans_up_after_a_failure(
    ptr: pytest.Pytester,
) -> None:
    ptr.makepyfile(
        test_it="""
        import target

        def test_fails_under_faults(faults):
            injector = faults("py:target:answer=none")
            assert injector.installed
            assert target.answer() == "ok"

        def test_after_it():
            assert target.answer() == "ok"

        def test_counts(faults, journal):
            injector = faults("py:target:answer=@2none")
            assert [target.answer() for _ in range(3)] == ["ok", None, "ok"]
            site = "py:target:answer"
            assert (injector.calls(site), injector.injected(site)) == (3, 1)
            assert [e.call for e in journal.events()] == [2]
        """
    )
    result = run(ptr, "-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*resilience: journal*",
            "*fault.injected [[]faults[]] site='py:target:answer' fault='none' call=1",
        ]
    )


def test_faults_fixture_malformed_spec_shows_the_caret(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(test_it="def test_bad(faults):\n    faults('llama.generate=2*nope')\n")
    result = run(ptr)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*SpecError: unknown fault kind*", "*llama.generate=2*nope", "*^"])


def test_journal_and_clock_fixtures_are_shared_with_the_run_wide_injector(
    ptr: pytest.Pytester,
) -> None:
    ptr.makepyfile(
        test_it="""
        import target
        from pytest_resilience.core.clock import VirtualClock
        from pytest_resilience.core.events import FaultInjected
        from pytest_resilience.core.journal import Journal

        def test_shared(journal, clock):
            assert isinstance(clock, VirtualClock)
            assert isinstance(journal, Journal)
            clock.sleep(10)
            assert target.answer() is None  # 30s of injected latency, then None
            (event,) = journal.events(FaultInjected)
            assert event.time == 10.0
            assert clock.now() == 10.0
        """
    )
    run(ptr, "--inject-faults", "py:target:answer=none").assert_outcomes(passed=1)


def test_a_timeout_fault_on_the_clock_fixture_takes_no_real_time(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import time
        import target

        def test_latency(clock):
            start = time.perf_counter()
            assert target.answer() == "ok"
            assert clock.now() == 600.0
            assert time.perf_counter() - start < 30  # 10 real minutes would not pass
        """
    )
    run(ptr, "--inject-faults", "py:target:answer=latency(10m)").assert_outcomes(passed=1)


def test_async_tests_meet_faults(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import pytest
        import target

        @pytest.mark.asyncio
        async def test_async(faults):
            faults("py:target:aanswer=1*raise(ConnectionError)")
            with pytest.raises(ConnectionError):
                await target.aanswer()
            assert await target.aanswer() == "ok"
        """
    )
    run(ptr).assert_outcomes(passed=1)


def test_anyio_and_asyncio_tests_wait_in_virtual_time(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import time
        import pytest
        import target

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_anyio(faults, clock):
            faults("py:target:aanswer=1*raise(ConnectionError)->latency(10m)")
            with pytest.raises(ConnectionError):
                await target.aanswer()
            started = time.perf_counter()
            assert await target.aanswer() == "ok"
            assert clock.now() == 600.0
            assert time.perf_counter() - started < 30  # 10 real minutes would not pass

        @pytest.mark.asyncio
        async def test_pytest_asyncio(faults, clock):
            faults("py:target:aanswer=latency(10m)")
            started = time.perf_counter()
            assert await target.aanswer() == "ok"
            assert clock.now() == 600.0
            assert time.perf_counter() - started < 30  # 10 real minutes would not pass
        """
    )
    result = run(ptr)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["tests under faults * 2"])  # the fixture's faults count too


SLEEPERS = """
import time
import pytest

def test_tenacity(clock):
    import tenacity
    calls = []

    @tenacity.retry(wait=tenacity.wait_fixed(60), stop=tenacity.stop_after_attempt(3))
    def flaky():
        calls.append(clock.now())
        raise ConnectionError

    start = time.perf_counter()
    with pytest.raises(tenacity.RetryError):
        flaky()
    assert calls == [0.0, 60.0, 120.0]
    assert time.perf_counter() - start < 30  # 120 real seconds would not pass

def test_backoff(clock):
    import backoff
    calls = []

    @backoff.on_exception(backoff.constant, ConnectionError, interval=30, max_tries=3, jitter=None)
    def flaky():
        calls.append(clock.now())
        raise ConnectionError

    with pytest.raises(ConnectionError):
        flaky()
    assert calls == [0.0, 30.0, 60.0]

def test_stamina(clock):
    import stamina
    calls = []

    @stamina.retry(
        on=ConnectionError, attempts=3, wait_initial=10, wait_jitter=0, wait_max=10, timeout=None
    )
    def flaky():
        calls.append(clock.now())
        raise ConnectionError

    with pytest.raises(ConnectionError):
        flaky()
    assert calls == [0.0, 10.0, 20.0]
"""
RESTORED = """
import time

def test_restored_after():
    import tenacity.nap, backoff._sync
    assert tenacity.nap.time is time
    assert backoff._sync.time is time
"""


@pytest.mark.skipif(
    not all(importlib.util.find_spec(n) for n in ("tenacity", "stamina", "backoff")),
    reason="needs tenacity, stamina and backoff",
)
def test_virtual_time_marker_runs_library_sleeps_on_the_clock(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_sleepers="import pytest\npytestmark = pytest.mark.virtual_time\n" + SLEEPERS,
        test_zz_after=RESTORED,
    )
    run(ptr, "-p", "no:randomly").assert_outcomes(passed=4)


def test_patch_sleeps_by_hand_and_unknown_library(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import pytest, tenacity.nap

        def test_by_hand(clock):
            assert clock.patch_sleeps("tenacity") == ["tenacity"]
            tenacity.nap.sleep(5)
            assert clock.now() == 5.0
            with pytest.raises(ValueError, match="cannot patch the sleeps of .'nope'."):
                clock.patch_sleeps("nope")
        """
    )
    run(ptr).assert_outcomes(passed=1)


def test_wall_time_follows_the_clock_only_when_asked(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import asyncio, datetime, time
        import pytest

        @pytest.mark.virtual_time(wall=True, start="2030-05-01T12:00:00")
        def test_marker(clock):
            assert datetime.datetime.now() == datetime.datetime(2030, 5, 1, 12)
            clock.sleep(3600)
            assert datetime.datetime.now() == datetime.datetime(2030, 5, 1, 13)
            utc = datetime.timezone.utc
            assert time.time() == datetime.datetime(2030, 5, 1, 13, tzinfo=utc).timestamp()

        def test_by_hand(clock):
            clock.freeze_wall_time("2030-01-01")
            clock.advance(90)
            assert datetime.datetime.now() == datetime.datetime(2030, 1, 1, 0, 1, 30)
            asyncio.run(asyncio.sleep(0))  # asyncio keeps real time: real_asyncio=True
            with pytest.raises(RuntimeError):
                clock.freeze_wall_time()

        def test_not_frozen_after():
            assert datetime.datetime.now().year < 2030
        """
    )
    run(ptr, "-p", "no:randomly").assert_outcomes(passed=3)


def test_leak_check_fixture_fails_a_leaking_test(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import os
        from pytest_resilience.plugin.assertions import assert_no_leaks

        kept = []

        def gen():
            yield 1

        def test_leaks(leak_check):
            g = leak_check.registry.register(gen(), "stream")
            next(g)
            kept.append(g)

        def test_clean(leak_check):
            assert_no_leaks(leak_check)
        """
    )
    result = run(ptr, "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*1 thing leaked:", "*- stream: <generator object gen*(created at *test_it.py:*)"]
    )


def test_tiny_model_fixture(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        def test_model(tiny_model):
            assert tiny_model.suffix == ".gguf"
            assert tiny_model.stat().st_size > 1000
        """
    )
    run(ptr).assert_outcomes(passed=1)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_llama_fixture_under_llama_faults(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import pytest
        from pytest_resilience.core.errors import InvalidOutput, ResilienceError

        def test_generate(llama, journal):
            with pytest.raises(ResilienceError):
                llama.generate("Hello")
            assert len(llama.generate("Hello")) > 0
            assert [e.site for e in journal.events()] == ["llama.generate"]
        """
    )
    run(ptr, "--inject-faults", "llama.generate=1*none").assert_outcomes(passed=1)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_daemon_and_resilient_client_fixtures_real_time(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        from pytest_resilience.plugin.assertions import assert_fell_back
        from pytest_resilience.core.events import DaemonUp

        def test_client(daemon, resilient_client, journal):
            assert daemon.alive
            assert journal.events(DaemonUp)  # its start is in the test's journal
            first = resilient_client.generate("Hello")
            daemon.kill()
            assert resilient_client.generate("Hello") == first
            assert_fell_back(journal, to="direct", times=1)

        def test_stopped(daemon):
            pass
        """
    )
    run(ptr, "-p", "no:randomly").assert_outcomes(passed=2)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_a_session_daemon_is_shared_and_revived_after_a_kill_real_time(
    ptr: pytest.Pytester,
) -> None:
    ptr.makeini(INI + "resilience_daemon_scope = session\nresilience_leak_check = true\n")
    ptr.makepyfile(
        test_it="""
        from pytest_resilience.core.events import DaemonDown

        pids = []

        def test_kill(daemon, journal):
            pids.append(daemon.pid)
            daemon.kill()
            assert journal.events(DaemonDown)  # the test's journal hears of it

        def test_running_again(daemon, journal):
            assert daemon.alive and daemon.pid != pids[0]
            pids.append(daemon.pid)

        def test_same_process(daemon, journal):
            assert daemon.pid == pids[1]
            assert not journal.events(DaemonDown)  # the earlier tests' events are theirs

        def test_restart_within_the_test(daemon):
            daemon.restart()  # a new child, which outlives the test: not a leak
            pids.append(daemon.pid)

        def test_pause(daemon):
            assert daemon.pid == pids[2]
            daemon.pause()

        def test_resumed(daemon):
            assert daemon.alive and not daemon.paused and daemon.pid == pids[2]
        """
    )
    run(ptr, "-p", "no:randomly").assert_outcomes(passed=6)


def test_a_bad_daemon_scope_is_a_usage_error(ptr: pytest.Pytester) -> None:
    ptr.makeini(INI + "resilience_daemon_scope = forever\n")
    ptr.makepyfile(test_it="def test_it():\n    pass\n")
    result = run(ptr)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    expected = "ERROR: ini option resilience_daemon_scope (*): expected function or session, not"
    result.stderr.fnmatch_lines([expected + " 'forever'"])


def test_virtual_time_marker_alone_provides_the_clock(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import time
        import pytest
        import tenacity.nap

        @pytest.mark.virtual_time
        def test_auto(request):
            assert "clock" in request.fixturenames
            tenacity.nap.sleep(30)
            assert request.getfixturevalue("clock").now() == 30.0

        def test_plain(request):
            assert "clock" not in request.fixturenames
            assert tenacity.nap.time is time
        """
    )
    run(ptr, "-p", "no:randomly").assert_outcomes(passed=2)
