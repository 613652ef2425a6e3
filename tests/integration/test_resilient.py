"""The resilient client against a real daemon (``llama_cpp.server`` on 127.0.0.1) and the
same tiny model in process: kill, freeze and restart the daemon under it.

Every daemon is started by a fixture and closed by its finaliser, even when a test fails;
an autouse check fails a test that leaves a child process (or a zombie) behind.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import psutil  # type: ignore[import-untyped]
import pytest

from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.daemon import DaemonBackend, DaemonProcess, ServerOptions, Timeouts
from pytest_resilience.backends.llama import LlamaBackend
from pytest_resilience.backends.resilient import ResilientClient
from pytest_resilience.core.breaker import CircuitBreaker, ConsecutiveFailures, HalfOpen, State
from pytest_resilience.core.errors import DaemonUnavailable, FallbackError, ModelNotFound
from pytest_resilience.core.events import DaemonDown, DaemonRestarted, DaemonUp, FallbackUsed

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from pytest_resilience.core.journal import Journal

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

SHORT = GenerationParams(max_tokens=24)
LONG = GenerationParams(max_tokens=900)  # about half a second of streaming; fits n_ctx 1024
# The client's deadline when the daemon is frozen: every healthy answer (the daemon's, and
# each chunk of a stream, in process too) must fit in it on a machine busy with other work,
# and each freeze waits it out in real time. 0.3 s did not fit under load (2 cores, -n 8).
DEADLINE = 3.0


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    """Fail a test that leaves a child process behind (and kill it)."""
    before = _children()
    yield
    stray = _children() - before
    for pid in stray:
        try:
            proc = psutil.Process(pid)
            proc.kill()
            proc.wait(5)
        except psutil.NoSuchProcess:
            continue
    assert not stray, f"child processes left behind: {sorted(stray)}"


@pytest.fixture
def own_daemon(tiny_model_path: Path, journal: Journal) -> Iterator[DaemonProcess]:
    """A daemon of the test's own (to kill, freeze, restart); closed even on failure."""
    process = DaemonProcess(tiny_model_path, ServerOptions(n_ctx=2048), journal=journal)
    try:
        yield process.start()
    finally:
        process.close()


@pytest.fixture
def make(
    own_daemon: DaemonProcess, llama_backend: LlamaBackend, journal: Journal
) -> Iterator[Callable[..., ResilientClient]]:
    """ResilientClient factory over the test's daemon and the session's in-process model."""
    made: list[tuple[ResilientClient, DaemonBackend]] = []

    def build(timeouts: Timeouts | None = None, **kwargs: Any) -> ResilientClient:
        backend = DaemonBackend(own_daemon.base_url, timeouts=timeouts)
        kwargs.setdefault("journal", journal)
        kwargs.setdefault("process", own_daemon)
        client = ResilientClient(backend, kwargs.pop("direct", llama_backend), **kwargs)
        made.append((client, backend))
        return client

    yield build
    for client, backend in made:
        client.close()
        backend.close()


def test_a_healthy_daemon_answers_every_call(
    make: Callable[..., ResilientClient], llama_backend: LlamaBackend, journal: Journal
) -> None:
    client = make()
    expected = llama_backend.generate("Hello", SHORT)
    assert client.generate("Hello", SHORT) == expected
    stream = client.stream("Hello", SHORT)
    assert stream is not None
    assert "".join(stream) == expected
    assert stream.source == "daemon"
    assert stream.complete
    assert journal.events(FallbackUsed, DaemonDown) == []
    assert client.daemon_up is True


def test_a_killed_daemon_is_answered_in_process_and_the_breaker_opens(
    make: Callable[..., ResilientClient],
    own_daemon: DaemonProcess,
    llama_backend: LlamaBackend,
    journal: Journal,
) -> None:
    client = make()
    expected = llama_backend.generate("Hello", SHORT)
    assert client.generate("Hello", SHORT) == expected
    own_daemon.kill()
    for _ in range(3):
        assert client.generate("Hello", SHORT) == expected
    assert client.breaker.state is State.OPEN
    assert client.embed("Hello") == llama_backend.embed("Hello")
    assert asyncio.run(client.agenerate("Hello", SHORT)) == expected

    downs = [e for e in journal.events(DaemonDown) if e.source == client.name]
    assert len(downs) == 1
    assert downs[0].reason.startswith("DaemonUnavailable")
    used = journal.events(FallbackUsed)
    assert len(used) == 5
    assert all(u.step == "direct" for u in used)
    assert used[0].after[0].startswith("daemon: DaemonUnavailable")
    assert all(u.after[0].startswith("daemon: CircuitOpenError") for u in used[3:])


def test_sigkill_mid_stream_is_finished_in_process_without_loss_or_duplication(
    make: Callable[..., ResilientClient],
    own_daemon: DaemonProcess,
    llama_backend: LlamaBackend,
    journal: Journal,
) -> None:
    client = make()
    expected = llama_backend.generate("Tell me a story", LONG)
    stream = client.stream("Tell me a story", LONG)
    assert stream is not None
    received: list[str] = []
    for chunk in stream:
        received.append(chunk)
        if len(received) == 5:
            own_daemon.kill()
    assert not own_daemon.alive
    assert "".join(received) == expected
    assert stream.text == expected
    assert stream.fell_back
    assert stream.complete
    (used,) = journal.events(FallbackUsed)
    assert used.after[0].startswith("daemon: DaemonLost")


def test_sigstop_falls_back_within_the_client_deadline_then_resume_real_time(
    make: Callable[..., ResilientClient],
    own_daemon: DaemonProcess,
    llama_backend: LlamaBackend,
    journal: Journal,
) -> None:
    client = make(timeout=DEADLINE)
    expected = llama_backend.generate("Frozen", SHORT)
    assert client.generate("Frozen", SHORT) == expected
    assert client.daemon_up is True

    own_daemon.pause()
    started = time.perf_counter()
    assert client.generate("Frozen", SHORT) == expected
    assert time.perf_counter() - started >= DEADLINE  # the deadline was waited out in full
    assert own_daemon.paused  # still frozen: the answer was the fallback's
    (down,) = [e for e in journal.events(DaemonDown) if e.source == client.name]
    # the client's own deadline ended the wait, not the daemon backend's read timeout (60 s)
    assert (
        down.reason == f"DeadlineExceeded: {client.name} daemon deadline of {DEADLINE:g}s exceeded"
    )
    (used,) = journal.events(FallbackUsed)
    assert used.after == (f"daemon: {down.reason}",)

    own_daemon.resume()
    assert client.generate("Frozen", SHORT) == expected
    assert len(journal.events(FallbackUsed)) == 1  # back on the daemon
    assert any(e.source == client.name for e in journal.events(DaemonUp))

    long = llama_backend.generate("Frozen", LONG)
    stream = client.stream("Frozen", LONG)
    assert stream is not None
    received = [next(stream) for _ in range(3)]
    assert stream.source == "daemon"  # still streaming from the daemon when it freezes
    own_daemon.pause()
    received.extend(stream)
    assert "".join(received) == long
    assert stream.fell_back
    assert stream.complete
    stalled = journal.events(FallbackUsed)[-1].after[0]
    assert stalled.startswith("daemon: StreamStalled: stream stalled: no chunk for ")
    assert "(idle deadline)" in stalled  # the guard's idle deadline, not a read timeout
    assert own_daemon.paused
    own_daemon.resume()


def test_the_monitor_restarts_a_killed_daemon_and_calls_return_to_it_real_time(
    make: Callable[..., ResilientClient],
    own_daemon: DaemonProcess,
    llama_backend: LlamaBackend,
    journal: Journal,
) -> None:
    breaker = CircuitBreaker(
        "daemon",
        on=DaemonUnavailable,
        trip=ConsecutiveFailures(1),
        recovery=HalfOpen(after=0.2),
        journal=journal,
    )
    client = make(breaker=breaker)
    expected = llama_backend.generate("Again", SHORT)
    old_pid = own_daemon.pid
    own_daemon.kill()
    assert client.generate("Again", SHORT) == expected
    assert breaker.state is State.OPEN

    client.watch(interval=0.05, restart=True)
    # generous: a restart waits for the new daemon's start, slow on a loaded machine; the
    # bound only ends the test of a monitor that never closes the breaker
    give_up = time.monotonic() + 60.0
    while breaker.stats().state is not State.CLOSED and time.monotonic() < give_up:
        time.sleep(0.02)
    assert breaker.stats().state is State.CLOSED
    client.close()  # stops the monitor thread (the leak check would see it otherwise)

    assert own_daemon.alive
    assert own_daemon.pid != old_pid
    (restarted,) = journal.events(DaemonRestarted)
    assert restarted.pid == own_daemon.pid
    assert any(e.source == client.name for e in journal.events(DaemonUp))
    fallbacks = len(journal.events(FallbackUsed))
    assert client.generate("Again", SHORT) == expected
    assert len(journal.events(FallbackUsed)) == fallbacks


def test_never_fail_returns_none_when_the_daemon_and_the_model_both_fail(
    make: Callable[..., ResilientClient], own_daemon: DaemonProcess, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.gguf"

    def load() -> LlamaBackend:
        return LlamaBackend(missing, n_threads=1)

    own_daemon.kill()
    never_fail = make(direct=load, policy="never_fail")
    assert never_fail.generate("Hello", SHORT) is None
    assert never_fail.stream("Hello", SHORT) is None
    assert never_fail.embed("Hello") is None

    raising = make(direct=load)
    with pytest.raises(FallbackError) as failed:
        raising.generate("Hello", SHORT)
    (daemon_name, daemon_error), (direct_name, direct_error) = failed.value.failures
    assert (daemon_name, direct_name) == ("daemon", "direct")
    assert isinstance(daemon_error, DaemonUnavailable)
    assert isinstance(direct_error, ModelNotFound)
