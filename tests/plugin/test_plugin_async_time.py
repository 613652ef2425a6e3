"""Virtual time for async tests: under ``virtual_time`` (or ``--virtual-time``) the event loops
of pytest-asyncio, anyio's asyncio backend and ``asyncio.run`` run on the test's clock, so
the app's async backoffs and timeouts take no real time; a coroutine that can never finish
fails with ``HangDetected``; real I/O still arrives in real time; what virtual time cannot
cover (trio, a loop made before the test's clock) is refused; tests without virtual time
keep their loops. Also the ``clock`` fixture's own sleeps, and ``wall=True`` with pytest's
own timing.

The first half runs here, under this suite's own plugin; the second half (what must fail,
and what needs options) in pytester runs. No test asserts how long it took: the timeout
marks only keep a regression from hanging the run.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import anyio
import backoff
import pytest
import stamina
import tenacity

from pytest_resilience.core.clock import SystemClock, loop_clock
from pytest_resilience.core.events import AppRetry
from pytest_resilience.plugin.async_time import ClockPolicy
from tests.unit.tcp_server import tcp_server

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pytest_resilience.core.journal import Journal
    from pytest_resilience.plugin.fixtures import TestClock

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(90)

# Extension modules cannot be loaded twice in a process, and pytester unloads what its runs
# import: load them here, once.
for _name in ("tenacity", "stamina", "backoff", "freezegun", "openai", "trio"):
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name)


class Flaky:
    """Stands for a call to a model: refuses ``failures`` times, then answers."""

    failures = 0

    def __call__(self, prompt: str) -> str:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("refused")
        return f"answer to {prompt}"


FLAKY = Flaky()


@pytest.fixture
def flaky() -> Flaky:
    FLAKY.failures = 0
    return FLAKY


@tenacity.retry(
    retry=tenacity.retry_if_exception_type(ConnectionError),
    wait=tenacity.wait_fixed(30),
    stop=tenacity.stop_after_attempt(11),
)
async def tenacity_ask(prompt: str) -> str:
    await asyncio.sleep(0)
    return FLAKY(prompt)


@stamina.retry(
    on=ConnectionError, attempts=11, wait_initial=30, wait_max=30, wait_jitter=0, timeout=None
)
async def stamina_ask(prompt: str) -> str:
    await asyncio.sleep(0)
    return FLAKY(prompt)


@backoff.on_exception(backoff.constant, ConnectionError, interval=30, max_tries=11, jitter=None)
async def backoff_ask(prompt: str) -> str:
    await asyncio.sleep(0)
    return FLAKY(prompt)


ASK: dict[str, Callable[[str], Awaitable[str]]] = {
    "tenacity": tenacity_ask,
    "stamina": stamina_ask,
    "backoff": backoff_ask,
}
TEN_BACKOFFS = [(n, 30.0, 30.0 * (n - 1)) for n in range(1, 11)]  # (attempt, delay, at)


def backoffs(journal: Journal, library: str) -> list[tuple[int, float, float]]:
    events = journal.events(AppRetry)
    assert {e.library for e in events} == {library}
    return [(e.attempt, e.delay, e.time) for e in events]


# ------------------------------------------------------------------ pytest-asyncio


@pytest.mark.virtual_time
@pytest.mark.asyncio
@pytest.mark.parametrize("library", ["tenacity", "stamina", "backoff"])
async def test_ten_half_minute_async_backoffs_run_on_the_clock(
    library: str, flaky: Flaky, clock: TestClock, journal: Journal
) -> None:
    assert loop_clock(asyncio.get_running_loop()) is clock
    flaky.failures = 10
    assert await ASK[library]("hi") == "answer to hi"
    assert backoffs(journal, library) == TEN_BACKOFFS
    assert clock.now() == 300.0


@pytest.mark.virtual_time
@pytest.mark.asyncio
async def test_sleeps_timers_and_a_ten_minute_timeout_run_on_the_clock(clock: TestClock) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(10):
        await asyncio.sleep(30)
    assert clock.now() == 300.0
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(600):
            await asyncio.Event().wait()
    assert clock.now() == 900.0
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), timeout=600)
    assert clock.now() == 1500.0
    fired: list[tuple[str, float]] = []
    loop.call_later(60, lambda: fired.append(("call_later", loop.time())))
    loop.call_at(loop.time() + 120, lambda: fired.append(("call_at", loop.time())))
    await asyncio.sleep(121)
    assert fired == [("call_later", 1560.0), ("call_at", 1620.0)]


@pytest.mark.virtual_time
@pytest.mark.asyncio
async def test_a_real_server_answers_while_a_ten_minute_timeout_is_armed(clock: TestClock) -> None:
    with tcp_server(b"pong\n", delay=0.05) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"ping\n")
            async with asyncio.timeout(600):
                answer = await reader.readline()
            await asyncio.sleep(30)  # a sleep with the socket still open: at once
        finally:
            writer.close()
            await writer.wait_closed()
    assert answer == b"pong\n"  # the real answer, not a virtual timeout
    assert clock.now() == 30.0


# ------------------------------------------------------------------ anyio, asyncio.run


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.virtual_time
@pytest.mark.anyio
async def test_anyio_on_asyncio_runs_on_the_clock(
    flaky: Flaky, clock: TestClock, journal: Journal
) -> None:
    assert loop_clock(asyncio.get_running_loop()) is clock
    flaky.failures = 10
    assert await stamina_ask("hi") == "answer to hi"
    assert backoffs(journal, "stamina") == TEN_BACKOFFS
    with pytest.raises(TimeoutError), anyio.fail_after(600):
        await anyio.Event().wait()
    await anyio.sleep(30)
    assert clock.now() == 930.0


@pytest.mark.virtual_time
def test_asyncio_run_in_a_sync_test_runs_on_the_clock(
    flaky: Flaky, clock: TestClock, journal: Journal
) -> None:
    flaky.failures = 10
    assert asyncio.run(backoff_ask("hi")) == "answer to hi"
    assert backoffs(journal, "backoff") == TEN_BACKOFFS
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(asyncio.Event().wait(), timeout=600))
    assert clock.now() == 900.0
    assert isinstance(asyncio.get_event_loop_policy(), ClockPolicy)


def test_between_virtual_time_tests_new_loops_are_the_usual_ones() -> None:
    # this run has virtual-time pytest-asyncio tests: the policy is wrapped for the session,
    # and with no test clock current it makes the loops the wrapped policy makes
    assert isinstance(asyncio.get_event_loop_policy(), ClockPolicy)
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop_clock(loop), SystemClock)
    finally:
        loop.close()


# ------------------------------------------------------------------ pytester runs

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nasyncio_mode = strict\n"


@pytest.fixture
def ptr(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:randomly", *args)


def test_a_coroutine_that_awaits_for_ever_fails_with_hang_detected(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import asyncio
        import pytest

        @pytest.mark.virtual_time
        @pytest.mark.asyncio
        async def test_waits_for_ever():
            await asyncio.Event().wait()

        @pytest.mark.virtual_time
        @pytest.mark.anyio
        @pytest.mark.parametrize("anyio_backend", ["asyncio"])
        async def test_anyio_waits_for_ever():
            await asyncio.Event().wait()

        @pytest.mark.virtual_time
        def test_asyncio_run_waits_for_ever():
            asyncio.run(asyncio.Event().wait())
        """
    )
    result = run(ptr)
    result.assert_outcomes(failed=3)
    # each names the stuck task by its await chain: the test, then asyncio.Event.wait
    for name in ("test_waits_for_ever", "test_anyio_waits_for_ever"):
        result.stdout.re_match_lines(
            [rf"E +pytest_resilience.core.errors.HangDetected: .*(at|>) {name}\(\) "
             r"\(.*test_it.py:\d+\) > wait\(\) .*Put a timeout \(asyncio.timeout,.*"]
        )  # fmt: skip
    result.stdout.re_match_lines([r"E +.*HangDetected: .* at wait\(\) .*"])  # asyncio.run


def test_trio_under_virtual_time_is_refused(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import pytest

        pytestmark = pytest.mark.anyio

        @pytest.mark.virtual_time
        @pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
        async def test_either():
            pass

        @pytest.mark.parametrize("anyio_backend", ["trio"])
        async def test_trio_in_real_time():
            pass
        """
    )
    result = run(ptr)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_either?trio?*",
            "virtual time runs asyncio event loops on the test's clock, and this test runs on "
            "anyio's 'trio' backend, whose waits would take real time.*",
        ]
    )


def test_a_loop_wider_than_the_test_is_refused(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import asyncio
        import pytest

        @pytest.mark.virtual_time
        @pytest.mark.asyncio(loop_scope="module")
        async def test_module_loop():
            await asyncio.sleep(3600)

        @pytest.mark.asyncio(loop_scope="module")
        async def test_module_loop_in_real_time():
            await asyncio.sleep(0)
        """
    )
    result = run(ptr)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*this test runs on a module-scoped loop, which outlives the test and its clock*"]
    )


def test_a_loop_from_a_factory_of_the_suites_own_is_refused(ptr: pytest.Pytester) -> None:
    ptr.makeconftest(
        """
        import asyncio

        def pytest_asyncio_loop_factories(config, item):
            return {"plain": asyncio.SelectorEventLoop}
        """
    )
    ptr.makepyfile(
        test_it="""
        import asyncio
        import pytest

        @pytest.mark.virtual_time
        @pytest.mark.asyncio
        async def test_own_loop():
            await asyncio.sleep(3600)
        """
    )
    result = run(ptr)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*this test runs in virtual time, but its event loop (*EventLoop) does not follow "
            "its clock*pytest_asyncio_loop_factories hook*"
        ]
    )


def test_an_anyio_loop_shared_with_a_wider_fixture_is_refused(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import asyncio
        import pytest

        @pytest.fixture(scope="module")
        def anyio_backend():
            return "asyncio"

        @pytest.fixture(scope="module")
        async def shared():
            return "made on the module's loop, before the test's clock"

        @pytest.mark.virtual_time
        @pytest.mark.anyio
        async def test_on_the_shared_loop(shared):
            await asyncio.sleep(0)
        """
    )
    result = run(ptr)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*this async test runs in virtual time, but no event loop of its clock ran it*"]
    )


def test_virtual_time_for_every_test_and_none_for_the_others(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_it="""
        import asyncio
        import pytest
        from pytest_resilience.core.clock import SystemClock, VirtualClock, loop_clock

        @pytest.mark.asyncio
        async def test_unmarked(request):
            assert isinstance(loop_clock(asyncio.get_running_loop()), VirtualClock)
            await asyncio.sleep(3600)
            assert request.getfixturevalue("clock").now() == 3600

        @pytest.mark.real_time
        @pytest.mark.asyncio
        async def test_real_time():
            assert isinstance(loop_clock(asyncio.get_running_loop()), SystemClock)

        @pytest.mark.real_time
        def test_real_time_run():
            async def main():
                return loop_clock(asyncio.get_running_loop())
            assert isinstance(asyncio.run(main()), SystemClock)
        """,
        test_zz_after="""
        import asyncio
        import pytest
        from pytest_resilience.core.clock import SystemClock, loop_clock

        @pytest.mark.real_time
        def test_loops_after():
            loop = asyncio.new_event_loop()
            try:
                assert isinstance(loop_clock(loop), SystemClock)
            finally:
                loop.close()
        """,
    )
    policy = asyncio.get_event_loop_policy()
    run(ptr, "--virtual-time").assert_outcomes(passed=4)
    assert asyncio.get_event_loop_policy() is policy  # the run put it back
    run(ptr, "-k", "real_time or after").assert_outcomes(passed=3)  # no virtual time at all
    assert asyncio.get_event_loop_policy() is policy


SLEEPERS = """
import pytest, tenacity, stamina, backoff

@tenacity.retry(wait=tenacity.wait_fixed(60), stop=tenacity.stop_after_attempt(3), reraise=True)
def tenacity_flaky(calls, clock):
    calls.append(clock.now())
    raise ConnectionError

@stamina.retry(on=ConnectionError, attempts=3, wait_initial=10, wait_max=10, wait_jitter=0,
               timeout=None)
def stamina_flaky(calls, clock):
    calls.append(clock.now())
    raise ConnectionError

@backoff.on_exception(backoff.constant, ConnectionError, interval=30, max_tries=3, jitter=None)
def backoff_flaky(calls, clock):
    calls.append(clock.now())
    raise ConnectionError

def sleeps(clock):
    seen = []
    for flaky in (tenacity_flaky, stamina_flaky, backoff_flaky):
        calls = []
        with pytest.raises(ConnectionError):
            flaky(calls, clock)
        seen.append(calls)
    return seen

ON_THE_CLOCK = [[0.0, 60.0, 120.0], [120.0, 130.0, 140.0], [140.0, 170.0, 200.0]]
"""


@pytest.mark.skipif(
    not all(importlib.util.find_spec(n) for n in ("tenacity", "stamina", "backoff")),
    reason="needs tenacity, stamina and backoff",
)
def test_the_clock_fixture_alone_runs_library_sleeps_on_it(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        sleepers=SLEEPERS,
        test_it="""
        import time
        import pytest
        import tenacity.nap, backoff._sync
        from sleepers import sleeps, ON_THE_CLOCK

        def test_clock_alone(clock):
            assert sleeps(clock) == ON_THE_CLOCK

        @pytest.mark.virtual_time(sleeps=False)
        def test_sleeps_false(clock):
            assert tenacity.nap.time is time and backoff._sync.time is time

        @pytest.mark.real_time
        def test_real_time(clock):
            assert tenacity.nap.time is time and backoff._sync.time is time

        def test_restored_after():
            assert tenacity.nap.time is time and backoff._sync.time is time
        """,
    )
    run(ptr).assert_outcomes(passed=4)


def test_wall_time_moves_monotonic_and_perf_counter_but_not_pytests_timing(
    ptr: pytest.Pytester,
) -> None:
    pytest.importorskip("freezegun")
    ptr.makepyfile(
        test_it="""
        import threading, time
        import pytest

        @pytest.mark.virtual_time(wall=True)
        def test_an_hour(clock):
            wall, mono, perf = time.time(), time.monotonic(), time.perf_counter()
            clock.advance(3600)
            assert time.time() - wall == pytest.approx(3600)
            assert time.monotonic() - mono == pytest.approx(3600)
            assert time.perf_counter() - perf == pytest.approx(3600)
            threading.Event().wait(0.01)  # some real time, for the reports to measure
        """
    )
    result = run(ptr, "--durations=0", "-vv", "--junitxml=report.xml")
    result.assert_outcomes(passed=1)
    durations = {
        m[2]: float(m[1])
        for line in result.stdout.lines
        if (m := re.match(r"([\d.]+)s (setup|call|teardown) +test_it.py::test_an_hour", line))
    }
    assert set(durations) == {"setup", "call", "teardown"}
    assert 0.01 <= durations["call"] < 3600  # real: the frozen clock would say 3600
    assert all(0 <= seconds < 3600 for seconds in durations.values())
    [case] = ET.parse(ptr.path / "report.xml").getroot().iter("testcase")
    assert 0.01 <= float(case.get("time", "-1")) < 3600
