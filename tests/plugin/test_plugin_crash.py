"""The ``crash`` fault and crash isolation: a test whose faults abort its process (SIGABRT,
as llama.cpp does) fails alone and the run goes on, under pytest-xdist too; ``--isolate``
runs every test in a child; and the faults of a test reach the processes its app starts
(multiprocessing's spawn, ``subprocess`` running Python) through one schedule.

Every suite runs in a pytest subprocess (a crash must not reach this one), on the real
llama-cpp-python and the tiny model, with the leak check on.
"""

from __future__ import annotations

import importlib.util
import shlex
import signal
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python"
)

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
asyncio_mode = strict
resilience_leak_check = true
filterwarnings = error
"""

SUITE = """
import os

import pytest
from llama_cpp import Llama


@pytest.fixture
def llm(tiny_model):
    model = Llama(str(tiny_model), n_threads=1, n_threads_batch=1, verbose=False)
    yield model
    model.close()


@pytest.mark.faults("llama.generate=1*crash")
def test_crashes(llm):
    llm("Hello", max_tokens=4)


def test_passes(llm):
    assert llm("Hello", max_tokens=4)["choices"][0]["text"]
"""

# The model in a worker process of its own (spawn), started again when it dies.
APP = """
import multiprocessing


def serve(model_path, conn):
    from llama_cpp import Llama

    llm = Llama(model_path, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        while (prompt := conn.recv()) is not None:
            conn.send(llm(prompt, max_tokens=4)["choices"][0]["text"])
    finally:
        llm.close()


class Worker:
    def __init__(self, model_path):
        self.context = multiprocessing.get_context("spawn")
        self.model_path = model_path
        self.deaths = []
        self.start()

    def start(self):
        self.conn, theirs = self.context.Pipe()
        self.process = self.context.Process(target=serve, args=(self.model_path, theirs))
        self.process.start()
        theirs.close()

    def ask(self, prompt):
        for _ in range(3):
            try:
                self.conn.send(prompt)
                return self.conn.recv()
            except (EOFError, BrokenPipeError, ConnectionResetError):
                self.process.join()
                self.deaths.append(self.process.exitcode)
                self.conn.close()
                self.process.close()
                self.start()
        raise RuntimeError(f"the worker keeps dying: {self.deaths}")

    def close(self):
        self.conn.send(None)
        self.process.join()
        self.conn.close()
        self.process.close()
"""

# spawn starts multiprocessing's resource tracker once per process, for good: before the
# leak check's first look, so that it is not counted as the test's.
CONFTEST = """
import pytest


@pytest.fixture(scope="session", autouse=True)
def _resource_tracker():
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
"""


@pytest.fixture
def ptr(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> pytest.Pytester:
    # the model already written, in the cache of this run (pytester moves $HOME)
    monkeypatch.setenv("PYTEST_RESILIENCE_CACHE", str(tiny_model.parent.parent))
    pytester.makeini(INI)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def reproduce_command(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    at = lines.index("reproduce the failures under faults with:")
    return shlex.split(lines[at + 1].strip())


def test_a_crashing_test_fails_alone_and_its_reproduce_command_crashes_it_again(
    ptr: pytest.Pytester,
) -> None:
    ptr.makepyfile(test_suite=SUITE)
    result = run(ptr, "-rA")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*PASSED test_suite.py::test_passes*"])
    result.stdout.fnmatch_lines(
        ["*FAILED test_suite.py::test_crashes - *crashed (SIGABRT) at llama.generate"]
    )
    result.stdout.fnmatch_lines(
        [
            "crashed (SIGABRT) at llama.generate",
            "*Captured stderr call*",
            "ggml/src/ggml.c:0: GGML_ASSERT(fault injected at llama.generate) failed",
        ]
    )
    # the report counts and names it
    result.stdout.fnmatch_lines(
        [
            "tests under faults * 1",
            "faults injected * 1",
            "  llama.generate crash * 1",
            "tests crashed * 1",
            "  test_suite.py::test_crashes * crashed (SIGABRT) at llama.generate",
        ]
    )
    command = reproduce_command(result)
    assert command[:2] == ["pytest", "test_suite.py::test_crashes"], command
    again = run(ptr, *command[1:])
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*crashed (SIGABRT) at llama.generate*"])


def test_the_same_under_xdist(ptr: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    ptr.makepyfile(test_suite=SUITE)
    result = run(ptr, "-n", "2", "-rA")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAILED test_suite.py::test_crashes - *crashed (SIGABRT) at llama.generate",
        ]
    )
    result.stdout.fnmatch_lines(["tests crashed * 1", "reproduce the failures under faults with:"])
    assert reproduce_command(result)[:2] == ["pytest", "test_suite.py::test_crashes"]


ISOLATED = """
import os

MAIN = os.environ["MAIN_PID"]


def test_one():
    assert str(os.getpid()) != MAIN, "ran in the pytest process"


def test_two():
    assert str(os.getpid()) != MAIN, "ran in the pytest process"
"""


def test_isolate_runs_every_test_in_a_child_of_its_own(ptr: pytest.Pytester) -> None:
    ptr.makeconftest(
        "import os\n\ndef pytest_configure(config):\n"
        "    os.environ['MAIN_PID'] = str(os.getpid())\n"
    )
    ptr.makepyfile(test_pids=ISOLATED)
    run(ptr, "--isolate").assert_outcomes(passed=2)
    # and without it, the same tests run in the pytest process: the check above can fail
    not_isolated = run(ptr)
    not_isolated.assert_outcomes(failed=2)
    not_isolated.stdout.fnmatch_lines(["*ran in the pytest process*"])


def test_an_app_survives_its_spawned_worker_crashing(ptr: pytest.Pytester) -> None:
    ptr.makeconftest(CONFTEST)
    ptr.makepyfile(
        app=APP,
        test_app="""
        import signal

        import pytest

        import app


        @pytest.mark.faults("llama.generate=1*crash")
        def test_the_app_answers_from_a_new_worker(tiny_model):
            worker = app.Worker(str(tiny_model))
            try:
                answer = worker.ask("Hello")
            finally:
                worker.close()
            assert answer
            assert worker.deaths == [-signal.SIGABRT]  # the fault reached the spawned worker
        """,
    )
    result = run(ptr, "-rA")
    result.assert_outcomes(passed=1)
    # fired in the worker, journaled in the test: no FaultNotReached (warnings are errors)
    result.stdout.fnmatch_lines(["faults injected * 1", "  llama.generate crash * 1"])
    # and journaled before the verdicts judged the test: they saw the fault that fired
    result.stdout.fnmatch_lines(["verdicts broken * 0 in 1 test judged"])


def test_a_subprocess_running_python_gets_the_faults(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_sub=f"""
        import subprocess
        import sys

        import pytest


        @pytest.mark.faults("llama.generate=1*crash")
        def test_the_child_crashes(tiny_model):
            code = (
                "from llama_cpp import Llama\\n"
                f"llm = Llama({{str(tiny_model)!r}}, n_threads=1, n_threads_batch=1,"
                " verbose=False)\\n"
                "llm('Hello', max_tokens=2)\\n"
            )
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            assert done.returncode == -{int(signal.SIGABRT)}, done.stderr
            assert "GGML_ASSERT(fault injected at llama.generate) failed" in done.stderr
        """,
    )
    run(ptr, "-rA").assert_outcomes(passed=1)


def test_a_crash_that_reaches_nothing_is_reported(ptr: pytest.Pytester) -> None:
    ptr.makeini(INI.replace("filterwarnings = error\n", ""))
    ptr.makepyfile(
        test_unreached="""
        import subprocess
        import sys

        import pytest


        @pytest.mark.faults("llama.generate=1*crash")
        def test_never_generates():
            pass


        @pytest.mark.faults("llama.embed=1*crash")
        def test_a_child_that_never_embeds(tiny_model):
            code = "import llama_cpp"
            subprocess.run([sys.executable, "-c", code], check=True)
        """
    )
    result = run(ptr, "-rA")
    result.assert_outcomes(passed=2, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "*FaultNotReached: a fault asked for never fired: llama.generate: "
            "llama.generate was never called*",
        ]
    )
    result.stdout.fnmatch_lines(["*FaultNotReached*llama.embed was never called*"])


def test_a_crash_in_the_pytest_process_fails_the_test_not_the_run(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_guard="""
        from llama_cpp import Llama


        def test_faults_fixture_crash(tiny_model, faults):
            faults("llama.generate=1*crash")
            llm = Llama(str(tiny_model), n_threads=1, n_threads_batch=1, verbose=False)
            try:
                llm("Hello", max_tokens=2)
            finally:
                llm.close()


        def test_after():
            pass
        """
    )
    result = run(ptr)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        ["*a crash fault fired at llama.generate in the pytest process itself*"]
    )
