"""Unit tests for the leak check.

Threads, descriptors and processes are real here; a test that waits for one of them to end
does so in real time, briefly, and says so in its name.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import threading
import types
import weakref
from typing import TYPE_CHECKING, Any

import pytest

from pytest_resilience.backends.llama.stream import LlamaStream, _StopSignal
from pytest_resilience.core import leak_watch, leaks
from pytest_resilience.core.leaks import (
    Leak,
    ResourceRegistry,
    Snapshot,
    check,
    diff,
    format_leaks,
    snapshot,
)
from pytest_resilience.plugin.hooks import settings_of

if TYPE_CHECKING:
    from collections.abc import Generator
    from pathlib import Path

LINUX = sys.platform.startswith("linux")


def parked_thread(name: str) -> tuple[threading.Thread, threading.Event]:
    release = threading.Event()

    def park() -> None:
        release.wait(10.0)

    thread = threading.Thread(target=park, name=name, daemon=True)
    thread.start()
    return thread, release


def test_nothing_leaks_when_nothing_happens() -> None:
    before = snapshot()
    assert diff(before, snapshot()) == []
    assert check(before) == []


def test_a_parked_thread_is_a_leak_until_it_ends() -> None:
    before = snapshot()
    thread, release = parked_thread("parked")
    try:
        (leak,) = check(before, grace=0)
        assert leak.what == "thread"
        assert leak.detail.startswith("'parked' running ")
        assert "park" in leak.detail
        assert leak.detail.endswith(", daemon")
    finally:
        release.set()
        thread.join()
    assert check(before, grace=0) == []


def test_a_finishing_thread_is_forgiven_within_the_grace_real_time() -> None:
    before = snapshot()
    thread, release = parked_thread("finishing")
    release.set()  # ending, but maybe not yet ended when check() looks
    assert check(before, grace=2.0) == []
    assert not thread.is_alive()


def test_a_stuck_thread_outlives_a_short_grace_real_time() -> None:
    before = snapshot()
    thread, release = parked_thread("stuck")
    try:
        assert [leak.what for leak in check(before, grace=0.05)] == ["thread"]
    finally:
        release.set()
        thread.join()


def test_dummy_threads_are_not_counted() -> None:
    before = snapshot()
    dummy = threading._DummyThread()  # what a native thread calling into Python looks like
    try:
        assert dummy in threading.enumerate()
        assert check(before, grace=0) == []
    finally:
        with vars(threading)["_active_limbo_lock"]:
            vars(threading)["_active"].pop(dummy.ident, None)


@pytest.mark.skipif(not LINUX, reason="/proc file descriptors")
def test_an_open_file_descriptor_is_a_leak(tmp_path: Path) -> None:
    before = snapshot()
    path = tmp_path / "held.txt"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    try:
        assert diff(before, snapshot()) == [Leak("fd", f"{fd} -> {path}")]
    finally:
        os.close(fd)
    assert diff(before, snapshot()) == []


def test_a_reused_descriptor_number_counts_as_new() -> None:
    before = Snapshot(frozenset(), {3: "/a"}, {})
    after = Snapshot(frozenset(), {3: "/b", 4: "/c"}, {})
    assert [leak.detail for leak in diff(before, after)] == ["3 -> /b", "4 -> /c"]


def test_kinds_that_cannot_be_seen_are_skipped() -> None:
    before = Snapshot(frozenset(), None, None)
    after = Snapshot(frozenset(), {3: "/a"}, {42: "x"})
    assert diff(before, after) == []


def no_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda p: not str(p).startswith("/proc") and isdir(p))


def test_without_proc_file_descriptors_come_from_psutil(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_proc(monkeypatch)
    before = snapshot()
    assert before.fds is not None
    with (tmp_path / "f.txt").open("w") as f:
        fd = f.fileno()
        found = diff(before, snapshot())
        assert [leak.what for leak in found] == ["fd"]
        assert found[0].detail == f"{fd} -> {tmp_path / 'f.txt'}"


def test_without_proc_and_psutil_nothing_is_guessed(monkeypatch: pytest.MonkeyPatch) -> None:
    no_proc(monkeypatch)
    monkeypatch.setattr(leaks, "_psutil", lambda: None)
    assert (snapshot().fds, snapshot().processes) == (None, None)


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )


def test_a_running_child_process_is_a_leak_real_time() -> None:
    before = snapshot()
    child = sleeper()
    try:
        found = check(before, grace=0)
        processes = [leak for leak in found if leak.what == "process"]
        assert [leak.detail.split(":")[0] for leak in processes] == [f"pid {child.pid}"]
        assert "python" in processes[0].detail  # the command line, or the name before exec
        assert any(leak.what == "fd" and "pipe:" in leak.detail for leak in found)
    finally:
        child.communicate()
    assert check(before, grace=0) == []


@pytest.mark.skipif(not LINUX, reason="/proc process states")
def test_a_child_never_waited_for_is_a_zombie_real_time() -> None:
    before = snapshot()
    child = sleeper()
    assert child.stdin is not None
    child.stdin.close()
    try:
        # after it exits and before wait(), the kernel keeps it as a zombie
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        (leak,) = check(before, grace=0)
        assert leak.detail.endswith("(zombie: exited, never waited for)")
    finally:
        child.wait()
    assert check(before, grace=0) == []


def test_unfinished_tasks_of_a_loop_are_leaks() -> None:
    loop = asyncio.new_event_loop()
    try:
        before = snapshot(loop)

        async def forever(done: asyncio.Future[None]) -> None:
            await done

        done: asyncio.Future[None] = loop.create_future()
        task = loop.create_task(forever(done), name="orphan")
        loop.run_until_complete(asyncio.sleep(0))
        (leak,) = diff(before, snapshot(loop))
        assert leak.what == "task"
        assert (
            leak.detail
            == "'orphan' running test_unfinished_tasks_of_a_loop_are_leaks.<locals>.forever"
        )
        assert leak.where.startswith(f"{__file__}:")
        assert leak.where.endswith(" in forever")
        done.set_result(None)
        loop.run_until_complete(task)
        assert diff(before, snapshot(loop)) == []
    finally:
        loop.close()


# ----------------------------------------------------------------------------- registry


def numbers() -> Generator[int, None, None]:
    yield 1
    yield 2


def test_registry_tracks_a_generator_until_it_is_closed() -> None:
    registry = ResourceRegistry()
    before = snapshot(registry=registry)
    stream = registry.register(numbers(), "stream")
    line = sys._getframe().f_lineno - 1
    (leak,) = diff(before, snapshot(registry=registry))
    assert leak.what == "stream"
    assert "generator object numbers" in leak.detail
    assert leak.where == f"{__file__}:{line} in test_registry_tracks_a_generator_until_it_is_closed"
    next(stream)
    assert len(registry) == 1
    stream.close()
    assert len(registry) == 0
    assert diff(before, snapshot(registry=registry)) == []


def test_registry_forgets_collected_resources() -> None:
    registry = ResourceRegistry()
    registry.register(numbers())
    gc.collect()  # CPython frees it at once; this makes it explicit elsewhere
    assert registry.open_resources() == {}


class Response:
    def __init__(self) -> None:
        self.is_closed = False


class Handle:
    __slots__ = ("closed",)  # no __weakref__: held strongly until released

    def __init__(self) -> None:
        self.closed = False


def test_registry_follows_is_closed_and_closed_attributes() -> None:
    registry = ResourceRegistry()
    response, handle = registry.register(Response()), registry.register(Handle(), "handle")
    assert sorted(leak.what for leak in registry.open_resources().values()) == [
        "Response",
        "handle",
    ]
    response.is_closed = True
    handle.closed = True
    assert registry.open_resources() == {}


def test_registry_custom_probe_release_and_stacklevel() -> None:
    registry = ResourceRegistry()
    state = {"open": True}

    def make() -> dict[str, bool]:
        return registry.register(state, "conn", is_open=lambda s: s["open"], stacklevel=2)

    line = sys._getframe().f_lineno + 1
    conn = make()
    (leak,) = registry.open_resources().values()
    assert leak.where.endswith(f":{line} in test_registry_custom_probe_release_and_stacklevel")
    plain: list[Any] = registry.register([], "list")
    assert len(registry) == 2  # a list is open until released
    registry.release(plain)
    conn["open"] = False
    assert len(registry) == 0


def test_async_generators_and_coroutines_are_open_until_finished() -> None:
    registry = ResourceRegistry()

    async def agen() -> Any:
        yield 1

    async def coro() -> int:
        return 1

    gen, co = registry.register(agen()), registry.register(coro())
    assert len(registry) == 2

    async def run() -> None:
        async for _ in gen:
            pass
        await co

    asyncio.run(run())
    assert len(registry) == 0


def test_format_leaks_reads_well() -> None:
    text = format_leaks([Leak("thread", "'w' running f"), Leak("stream", "<gen>", "a.py:3 in g")])
    assert text == (
        "2 things leaked:\n  - thread: 'w' running f\n  - stream: <gen> (created at a.py:3 in g)"
    )
    assert format_leaks([Leak("fd", "3 -> /x")]).startswith("1 thing leaked:")


def test_this_suite_runs_under_the_plugins_leak_check(pytestconfig: pytest.Config) -> None:
    # what the check does is proven in tests/plugin; here, that our own suite has it on
    assert settings_of(pytestconfig).leak_check
    assert pytestconfig.pluginmanager.has_plugin("resilience-leak-check")


# ------------------------------------------------------------------- one-time opens


@pytest.mark.skipif(not LINUX, reason="/proc file descriptors")
def test_a_descriptor_held_by_a_module_attribute_is_a_one_time_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # what llama_cpp does at its import: module-level sinks, opened once, kept for good
    module = types.ModuleType("one_time_opener")
    before = snapshot()
    sink = vars(module)["sink"] = open(os.devnull, "w")  # noqa: SIM115 - as llama_cpp's
    monkeypatch.setitem(sys.modules, module.__name__, module)
    held_elsewhere = [open(os.devnull, "w")]  # noqa: SIM115 - closed below
    try:
        (leak,) = check(before, grace=0)
        assert (leak.what, leak.detail) == ("fd", f"{held_elsewhere[0].fileno()} -> /dev/null")
        assert [x.what for x in diff(before, snapshot())] == ["fd", "fd"]  # diff stays pure
    finally:
        held_elsewhere.pop().close()
        sink.close()
    assert check(before, grace=0) == []


# ----------------------------------------------------------------- creation sites


def line_after() -> int:
    """The line after the caller's: where the next statement creates something."""
    return sys._getframe(1).f_lineno + 1


def test_a_watch_names_where_a_thread_was_started() -> None:
    with leaks.watch():
        before = snapshot()
        line = line_after()
        thread, release = parked_thread("sited")
        try:
            (leak,) = check(before, grace=0)
        finally:
            release.set()
            thread.join()
    assert leak.what == "thread"
    assert leak.where.startswith(f"{__file__}:")  # parked_thread() starts it, in this file
    assert parked_thread.__name__ in leak.where or f":{line} " in leak.where


@pytest.mark.skipif(not LINUX, reason="/proc file descriptors")
def test_a_watch_names_where_a_file_and_a_socket_were_opened(tmp_path: Path) -> None:
    with leaks.watch():
        before = snapshot()
        line = line_after()
        held = (tmp_path / "held.txt").open("w")
        pair = socket.socketpair()
        try:
            found = check(before, grace=0)
        finally:
            held.close()
            for end in pair:
                end.close()
    here = f"{__file__}:{{}} in test_a_watch_names_where_a_file_and_a_socket_were_opened"
    assert [(x.what, x.where) for x in found] == [
        ("fd", here.format(line)),
        ("fd", here.format(line + 1)),
        ("fd", here.format(line + 1)),
    ]
    assert found[0].detail.endswith(str(tmp_path / "held.txt"))
    assert str(found[0]).endswith(f"(created at {here.format(line)})")


def test_a_watch_names_where_a_child_process_was_started_real_time() -> None:
    with leaks.watch():
        before = snapshot()
        line = line_after()
        child = sleeper()
        try:
            found = check(before, grace=0)
        finally:
            child.communicate()
    (process,) = [x for x in found if x.what == "process"]
    assert process.where.startswith(f"{__file__}:")
    assert f":{line} in " in process.where or " in sleeper" in process.where


def test_the_wrappers_come_and_go_with_the_watches() -> None:
    before = {name: vars(threading.Thread)[name] for name in ("start", "run")}
    outer = leak_watch._WATCHER.active  # the suite's own check watches each test
    with leaks.watch(), leaks.watch():
        assert leak_watch._WATCHER.active == outer + 2
        assert getattr(threading.Thread.start, "__wrapped__", None) is not None
    assert leak_watch._WATCHER.active == outer
    assert {name: vars(threading.Thread)[name] for name in before} == before  # put back
    if not outer:
        assert getattr(threading.Thread.start, "__wrapped__", None) is None


def test_creation_site_skips_this_package_and_the_standard_library() -> None:
    line = line_after()
    where = leaks.creation_site()
    assert where == f"{__file__}:{line} in {sys._getframe().f_code.co_name}"
    assert leaks.creation_site(stacklevel=10_000) == ""


# --------------------------------------------------------------------------- tasks


def test_a_task_left_pending_on_a_closed_loop_is_a_leak_with_its_creation_site() -> None:
    with leaks.use_registry() as registry, leaks.watch():
        before = snapshot(registry=registry)
        loop = asyncio.new_event_loop()
        gate: asyncio.Future[None] = loop.create_future()

        async def forever(gate: asyncio.Future[None]) -> None:
            await gate

        line = line_after()
        task = loop.create_task(forever(gate), name="orphan")
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        (leak,) = diff(before, snapshot(registry=registry))
        assert leak.what == "task"
        assert leak.detail == f"'orphan' running {forever.__qualname__}, on a closed loop"
        assert leak.where == (
            f"{__file__}:{line} in "
            "test_a_task_left_pending_on_a_closed_loop_is_a_leak_with_its_creation_site"
        )
        # dropped, it is destroyed pending (asyncio says so): still this test's leak
        del task, gate
        gc.collect()
        (lost,) = check(before, registry=registry, grace=0)
        assert lost.detail.startswith(f"'orphan' running {forever.__qualname__}, destroyed")
        assert lost.where == leak.where


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_a_task_destroyed_pending_before_the_check_is_still_a_leak() -> None:
    with leaks.use_registry() as registry, leaks.watch():
        before = snapshot(registry=registry)
        loop = asyncio.new_event_loop()

        async def never() -> None:  # pragma: no cover - never runs
            pass

        loop.create_task(never(), name="never-ran")  # noqa: RUF006 - dropped: destroyed pending
        loop.close()
        (leak,) = check(before, registry=registry, grace=0)
    assert leak.what == "task"
    assert leak.detail.startswith(f"'never-ran' running {never.__qualname__}, destroyed")
    assert leak.where.startswith(f"{__file__}:")


def test_tasks_a_runner_cancelled_or_that_finished_are_not_leaks() -> None:
    with leaks.use_registry() as registry, leaks.watch():
        before = snapshot(registry=registry)

        async def main() -> None:
            await asyncio.create_task(asyncio.sleep(0), name="awaited")
            asyncio.create_task(asyncio.Event().wait(), name="cancelled-by-run")  # noqa: RUF006

        asyncio.run(main())
        assert check(before, registry=registry, grace=0) == []


def test_a_task_of_a_given_loop_is_reported_once_when_the_registry_tracks_it() -> None:
    with leaks.use_registry() as registry, leaks.watch():
        loop = asyncio.new_event_loop()
        try:
            before = snapshot(loop, registry)
            gate: asyncio.Future[None] = loop.create_future()
            task = loop.create_task(asyncio.wait_for(gate, None), name="twice?")
            loop.run_until_complete(asyncio.sleep(0))
            (leak,) = diff(before, snapshot(loop, registry))
            assert leak.detail == "'twice?' running wait_for, still pending"
            gate.set_result(None)
            loop.run_until_complete(task)
        finally:
            loop.close()


# ------------------------------------------------------- the process-wide registry


class FakeModel:
    """What a LlamaStream needs of its backend, without llama_cpp."""

    name = "fake"

    def __init__(self) -> None:
        self._lock = threading.RLock()


def llama_stream(chunks: list[str]) -> LlamaStream:
    pieces = iter([{"choices": [{"text": c, "finish_reason": None}]} for c in chunks])
    return LlamaStream(FakeModel(), pieces, _StopSignal(None))  # type: ignore[arg-type]


def test_a_closed_llama_stream_is_not_reported_open() -> None:
    with leaks.use_registry() as registry:
        before = snapshot(registry=registry)
        stream = llama_stream(["Once", " upon"])
        assert next(stream) == "Once"
        (leak,) = diff(before, snapshot(registry=registry))
        assert str(leak).startswith(
            "stream: <LlamaStream of 'fake' open, 4 characters so far> (created at "
            f"{__file__}:"  # in llama_stream(), the first frame outside the package
        )
        stream.close()
        assert stream.closed
        assert diff(before, snapshot(registry=registry)) == []


def test_a_llama_stream_that_ran_out_is_closed() -> None:
    with leaks.use_registry() as registry:
        before = snapshot(registry=registry)
        stream = llama_stream(["a", "b"])
        assert list(stream) == ["a", "b"]
        assert stream.closed
        assert diff(before, snapshot(registry=registry)) == []


def test_backends_register_into_the_process_wide_registry() -> None:
    with leaks.use_registry() as registry:
        assert leaks.default_registry() is registry
        stream = llama_stream(["x"])
        assert registry.tracks(stream)
    assert leaks.default_registry() is not registry
    assert not leaks.default_registry().tracks(stream)
    stream.close()


def test_the_registry_never_keeps_a_resource_alive() -> None:
    with leaks.use_registry() as registry:
        stream = llama_stream(["x"])
        next(stream)
        ref = weakref.ref(stream)
        del stream
        assert ref() is None
        assert registry.open_resources() == {}


def test_a_resource_registered_before_the_snapshot_is_never_new() -> None:
    registry = ResourceRegistry()
    response = registry.register(Response())
    response.is_closed = True
    before = snapshot(registry=registry)
    response.is_closed = False  # reopened during the work: not created by it
    assert diff(before, snapshot(registry=registry)) == []


def test_a_dismissed_resource_is_not_reported_again() -> None:
    registry = ResourceRegistry()
    before = snapshot(registry=registry)
    kept = registry.register(numbers(), "stream")
    found = check(before, registry=registry, grace=0)
    assert [x.what for x in found] == ["stream"]
    registry.dismiss(found)
    assert check(before, registry=registry, grace=0) == []
    kept.close()


def test_a_resource_in_a_reference_cycle_is_collected_within_the_grace() -> None:
    registry = ResourceRegistry()
    before = snapshot(registry=registry)
    cycle: list[Any] = [registry.register(numbers(), "stream")]
    next(cycle[0])
    cycle.append(cycle)  # garbage once dropped, but only the collector can free it
    gc.disable()
    try:
        del cycle
        assert [x.what for x in diff(before, snapshot(registry=registry))] == ["stream"]
        assert check(before, registry=registry, grace=0.5) == []
    finally:
        gc.enable()


def test_the_registry_survives_collections_inside_its_own_lock() -> None:
    # weakref callbacks may run in the middle of any allocation, also under the lock
    registry = ResourceRegistry()
    before = snapshot(registry=registry)
    for _ in range(200):
        cycle: list[Any] = [registry.register(numbers(), "stream")]
        cycle.append(cycle)
        del cycle
        registry.register(numbers())
    gc.collect()
    assert check(before, registry=registry, grace=0) == []
