"""The leak check against each kind of leak, in a pytest run of its own (a subprocess).

One run holds, for each kind (thread, file descriptor, child process, asyncio task,
LlamaStream, LlamaBackend, DaemonStream, AsyncDaemonStream), a test that leaks it and a
clean twin. The leaking test must fail at teardown naming what leaked and the line that
created it; the twin must pass. The run is shared by the tests of this module (it is one
process either way), so each kind still gets a test of its own here.

Another run, with pytester, is a fresh process in which a test is the first to import
llama_cpp and load the tiny model: the two ``/dev/null`` files llama_cpp opens once per
process are not that test's leak.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from pytest_resilience.plugin.hooks import ENVIRONMENT

if TYPE_CHECKING:
    from pathlib import Path

pytest_plugins = ["pytester"]

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
HAS_HTTPX = importlib.util.find_spec("httpx") is not None
INI = """[pytest]
asyncio_default_fixture_loop_scope = function
asyncio_mode = strict
resilience_leak_check = true
"""

KINDS = '''
"""Each kind of leak, left by one test and avoided by its twin."""
import asyncio
import subprocess
import sys
import threading

import pytest

from pytest_resilience.backends.base import GenerationParams

kept = []  # what the leaking tests leave behind stays alive to the end of the run
SHORT = GenerationParams(max_tokens=4)
SLEEPER = [sys.executable, "-c", "import sys; sys.stdin.read()"]


def test_thread_leaks():
    stop = threading.Event()
    kept.append(stop)
    threading.Thread(target=stop.wait, name="leaky-thread", daemon=True).start()


def test_checked_twice_leaks(leak_check):  # the autouse check and the fixture: one report
    stop = threading.Event()
    kept.append(stop)
    threading.Thread(target=stop.wait, name="twice-checked", daemon=True).start()


def test_thread_clean():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="clean-thread", daemon=True)
    thread.start()
    stop.set()
    thread.join()


def test_fd_leaks(tmp_path):
    kept.append(open(tmp_path / "held.txt", "w"))


def test_fd_clean(tmp_path):
    with open(tmp_path / "held.txt", "w") as f:
        f.write("closed")


def test_process_leaks():
    kept.append(subprocess.Popen(SLEEPER, stdin=subprocess.PIPE))


def test_process_clean():
    subprocess.Popen(SLEEPER, stdin=subprocess.PIPE).communicate()


async def forever():
    await asyncio.Event().wait()


def test_task_leaks():
    loop = asyncio.new_event_loop()
    loop.create_task(forever(), name="leaky-task")
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()  # with the task still pending on it


def test_task_clean():
    async def main():
        await asyncio.create_task(asyncio.sleep(0), name="clean-task")

    asyncio.run(main())


@pytest.mark.asyncio
async def test_task_cancelled_by_its_runner_clean():
    # left running, but pytest-asyncio's runner cancels it, and it ends, with the loop
    asyncio.get_running_loop().create_task(forever(), name="cancelled-task")


@pytest.fixture(scope="module")
def model(tiny_model):
    pytest.importorskip("llama_cpp")
    from pytest_resilience.backends.llama import LlamaBackend

    with LlamaBackend(tiny_model, n_threads=1, name="shared") as backend:
        yield backend


def test_llama_stream_leaks(model):
    stream = model.stream("Once upon a time", SHORT)
    next(stream)
    kept.append(stream)


def test_llama_stream_clean(model):
    with model.stream("Once upon a time", SHORT) as stream:
        next(stream)


def test_llama_backend_leaks(tiny_model):
    pytest.importorskip("llama_cpp")
    from pytest_resilience.backends.llama import LlamaBackend

    kept.append(LlamaBackend(tiny_model, n_threads=1, name="leaky"))


def test_llama_backend_clean(tiny_model):
    pytest.importorskip("llama_cpp")
    from pytest_resilience.backends.llama import LlamaBackend

    with LlamaBackend(tiny_model, n_threads=1, name="clean") as backend:
        backend.generate("Hello", SHORT)


SSE = (
    b'data: {"choices": [{"text": "Hi", "finish_reason": null}]}\\n\\n'
    b'data: {"choices": [{"text": "!", "finish_reason": "stop"}]}\\n\\n'
    b"data: [DONE]\\n\\n"
)


def daemon_backend():
    httpx = pytest.importorskip("httpx")
    from pytest_resilience.backends.daemon import DaemonBackend

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=SSE))
    return DaemonBackend("http://daemon.test", transport=transport, async_transport=transport)


def test_daemon_stream_leaks():
    stream = daemon_backend().stream("Once")
    next(stream)
    kept.append(stream)


def test_daemon_stream_clean():
    with daemon_backend() as backend, backend.stream("Once") as stream:
        next(stream)


def test_async_daemon_stream_leaks():
    stream = daemon_backend().astream("Once")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(stream.__anext__())
    loop.close()  # without shutting its async generators down: the response stays open
    kept.append(stream)


def test_async_daemon_stream_clean():
    async def main():
        async with daemon_backend().astream("Once") as stream:
            await stream.__anext__()

    asyncio.run(main())
'''


@dataclass(frozen=True)
class Run:
    """A finished pytest run: its output, and the teardown error of each test."""

    output: str
    errors: dict[str, str]

    def passed(self, test: str) -> bool:
        return f"PASSED test_kinds.py::{test}" in self.output


_HEADER = re.compile(r"^_+ ERROR at teardown of (\w+) _+$", re.MULTILINE)


def parse(output: str) -> Run:
    parts = _HEADER.split(output)
    errors = dict(zip(parts[1::2], parts[2::2], strict=True))
    return Run(output, errors)


def clean_environment() -> dict[str, str]:
    """The environment without the plugin's variables and pytest's own (as pytester does)."""
    drop = {*ENVIRONMENT, "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST_XD")}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("leak-kinds")
    (folder / "pytest.ini").write_text(INI)
    (folder / "test_kinds.py").write_text(KINDS)
    args = ["-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:xdist", "-rA"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "test_kinds.py"],
        cwd=folder,
        env=clean_environment(),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return parse(done.stdout + done.stderr)


NEEDS_LLAMA = pytest.mark.skipif(not HAS_LLAMA, reason="needs llama-cpp-python")
NEEDS_HTTPX = pytest.mark.skipif(not HAS_HTTPX, reason="needs httpx")

#: kind -> the lines its leaking test's failure shows, in order ({site}: the test's line)
EXPECTED = {
    "thread": ["1 thing leaked:", "*- thread: 'leaky-thread' running Event.wait, daemon {site}"],
    "fd": ["1 thing leaked:", "*- fd: * -> */held.txt {site}"],
    "process": [
        "2 things leaked:",
        "*- fd: * -> pipe:*",  # its stdin: os.pipe() is not an audit event, so no site
        "*- process: pid *: *python* -c import sys; sys.stdin.read() {site}",
    ],
    "task": ["1 thing leaked:", "*- task: 'leaky-task' running forever, * {site}"],
    "llama_stream": [
        "1 thing leaked:",
        "*- stream: <LlamaStream of 'shared' open, * character* so far> {site}",
    ],
    "llama_backend": ["1 thing leaked:", "*- backend: <LlamaBackend 'leaky' '*.gguf' open> {site}"],
    "daemon_stream": [
        "1 thing leaked:",
        "*- stream: <DaemonStream from http://daemon.test open, 2 characters so far> {site}",
    ],
    "async_daemon_stream": [
        "1 thing leaked:",
        "*- stream: <AsyncDaemonStream from http://daemon.test open, 2 characters so far> {site}",
    ],
}
MARKS = {
    "llama_stream": [NEEDS_LLAMA],
    "llama_backend": [NEEDS_LLAMA],
    "daemon_stream": [NEEDS_HTTPX],
    "async_daemon_stream": [NEEDS_HTTPX],
}
CASES = [pytest.param(kind, marks=MARKS.get(kind, [])) for kind in EXPECTED]


@pytest.mark.parametrize("kind", CASES)
def test_a_leaking_test_fails_naming_what_leaked_and_where(kinds: Run, kind: str) -> None:
    test = f"test_{kind}_leaks"
    assert kinds.passed(test), kinds.output  # the test itself passed: its teardown failed
    assert test in kinds.errors, kinds.output
    where = f"(created at *test_kinds.py:* in {test})"
    lines = kinds.errors[test].strip().splitlines()
    pytest.LineMatcher(lines).fnmatch_lines([line.format(site=where) for line in EXPECTED[kind]])


@pytest.mark.parametrize("kind", CASES)
def test_its_clean_twin_passes(kinds: Run, kind: str) -> None:
    test = f"test_{kind}_clean"
    assert kinds.passed(test), kinds.output
    assert test not in kinds.errors, kinds.errors.get(test)


def test_a_task_its_runner_cancelled_is_not_a_leak(kinds: Run) -> None:
    test = "test_task_cancelled_by_its_runner_clean"
    assert kinds.passed(test), kinds.output
    assert test not in kinds.errors, kinds.errors.get(test)


def test_a_test_under_two_checks_is_failed_once(kinds: Run) -> None:
    error = kinds.errors["test_checked_twice_leaks"]
    assert error.count("leaked:") == 1, error
    assert error.count("'twice-checked'") == 1, error


def test_nothing_else_failed(kinds: Run) -> None:
    leaking = {f"test_{kind}_leaks" for kind in EXPECTED} | {"test_checked_twice_leaks"}
    if not HAS_LLAMA:
        leaking -= {"test_llama_stream_leaks", "test_llama_backend_leaks"}
    if not HAS_HTTPX:
        leaking -= {"test_daemon_stream_leaks", "test_async_daemon_stream_leaks"}
    assert set(kinds.errors) == leaking, kinds.output
    assert "FAILED" not in kinds.output, kinds.output


# ------------------------------------------------------------------ one-time opens

ONCE = """
import os
import sys

from pytest_resilience.backends.base import GenerationParams

kept = []


def test_the_first_to_load_llama_cpp(tiny_model):
    assert "llama_cpp" not in sys.modules  # llama_cpp opens its /dev/null sinks here
    from pytest_resilience.backends.llama import LlamaBackend

    with LlamaBackend(tiny_model, n_threads=1) as backend:
        backend.generate("Hello", GenerationParams(max_tokens=4))
    assert "llama_cpp" in sys.modules


def test_a_sink_that_a_test_keeps_is_still_a_leak():
    kept.append(open(os.devnull, "w"))
"""


@NEEDS_LLAMA
def test_the_first_test_to_load_llama_cpp_does_not_leak_its_one_time_opens(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    # the model already written, in the cache of this run (pytester moves $HOME)
    monkeypatch.setenv("PYTEST_RESILIENCE_CACHE", str(tiny_model.parent.parent))
    pytester.makeini(INI)
    pytester.makepyfile(test_once=ONCE)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_a_sink_that_a_test_keeps_is_still_a_leak*",
            "1 thing leaked:",
            "*- fd: * -> /dev/null (created at *test_once.py:* in test_a_sink_that_*)",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_the_first_to_load_llama_cpp*")
