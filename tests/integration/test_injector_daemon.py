"""The daemon.* sites against a real ``llama_cpp.server`` child process and DaemonBackend.

Requests, streams and the process itself: refused connections come from the kernel, a lost
daemon is really SIGKILLed, a paused one really SIGSTOPped. Hangs and latency run on a
VirtualClock; the tests that need real time say so in their names.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

import faults
from faults.proxy import FaultProxy
from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.daemon import DaemonBackend, DaemonProcess, ServerOptions, Timeouts
from pytest_resilience.core.cancel import deadline
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import (
    DaemonLost,
    DaemonUnavailable,
    DeadlineExceeded,
    InvalidOutput,
    RateLimited,
    StreamStalled,
)
from pytest_resilience.core.events import DaemonDown, FaultInjected
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.stream import StreamGuard

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

SHORT = GenerationParams(max_tokens=24)
PROMPT = "Once upon a time"
SEND = (vars(httpx.Client)["send"], vars(httpx.AsyncClient)["send"])


def _assert_restored() -> None:
    assert (vars(httpx.Client)["send"], vars(httpx.AsyncClient)["send"]) == SEND
    assert vars(httpx.Client)["send"] is SEND[0]


def _paused(daemon: DaemonProcess) -> bool:
    return daemon.paused


@pytest.fixture(scope="module")
def shared_daemon(tiny_model_path: Path) -> Iterator[DaemonProcess]:
    """One daemon for the tests that leave it running."""
    with DaemonProcess(tiny_model_path, ServerOptions(n_ctx=1024)) as d:
        yield d


@pytest.fixture
def spawn(tiny_model_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """A daemon of one's own, to kill, pause or restart; closed after the test."""
    made: list[DaemonProcess] = []

    def start(**kwargs: Any) -> DaemonProcess:
        made.append(DaemonProcess(tiny_model_path, ServerOptions(n_ctx=1024), **kwargs))
        return made[-1].start()

    yield start
    for d in made:
        d.close()


@pytest.fixture
def client() -> Iterator[Callable[..., DaemonBackend]]:
    made: list[DaemonBackend] = []

    def make(url: str, **kwargs: Any) -> DaemonBackend:
        made.append(DaemonBackend(url, **kwargs))
        return made[-1]

    yield make
    for b in made:
        b.close()


@pytest.fixture(scope="module")
def baseline(shared_daemon: DaemonProcess) -> dict[str, Any]:
    with DaemonBackend(shared_daemon.base_url) as b:
        return {"text": b.generate(PROMPT, SHORT), "chunks": list(b.stream(PROMPT, SHORT))}


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


# --------------------------------------------------------------------------- requests


def test_request_refuse_ratelimit_raise_lost_then_normal(
    shared_daemon: DaemonProcess, client: Callable[..., DaemonBackend], baseline: dict[str, Any]
) -> None:
    backend = client(shared_daemon.base_url)
    spec = 'daemon.request=@1refuse->@2ratelimit(retry_after=7s)->@3raise(OSError, "boom")->@4lost'
    journal = Journal()
    with faults.inject(spec, daemon=shared_daemon, journal=journal) as run:
        with pytest.raises(DaemonUnavailable, match="cannot connect") as refused:
            backend.generate(PROMPT, SHORT)
        assert isinstance(refused.value.__cause__, httpx.ConnectError)
        with pytest.raises(RateLimited) as limited:
            backend.generate(PROMPT, SHORT)
        assert limited.value.retry_after == 7.0
        with pytest.raises(OSError, match="boom"):
            backend.generate(PROMPT, SHORT)
        with pytest.raises(DaemonLost):
            backend.generate(PROMPT, SHORT)
        assert backend.generate(PROMPT, SHORT) == baseline["text"]
    assert shared_daemon.alive
    assert [e.call for e in journal.events(FaultInjected)] == [1, 2, 3, 4]
    assert run.calls("daemon.request") == 5
    _assert_restored()


def test_request_timeout_and_latency_follow_the_virtual_clock(
    shared_daemon: DaemonProcess,
    client: Callable[..., DaemonBackend],
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    backend = client(shared_daemon.base_url)
    started = time.perf_counter()
    spec = "daemon.request=@1timeout(30s)->@2timeout(30s)->@3latency(2s)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock):
        with pytest.raises(DeadlineExceeded), deadline(5.0, clock=vclock):
            backend.generate(PROMPT, SHORT)
        with pytest.raises(DeadlineExceeded, match="read timeout"):
            backend.generate(PROMPT, SHORT)  # ran out: httpx.ReadTimeout, mapped
        assert backend.generate(PROMPT, SHORT) == baseline["text"]
    assert vclock.now() == pytest.approx(37.0)
    # generous, for a loaded machine: the injected waits (37 s) served in real time would
    # exceed it; three real requests to the tiny model take well under a second
    assert time.perf_counter() - started < 30.0


def test_requests_elsewhere_are_not_touched(shared_daemon: DaemonProcess) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text="other"))
    with (
        faults.inject("daemon.request=refuse", daemon=shared_daemon) as run,
        httpx.Client(transport=transport) as other,
    ):
        assert other.get("http://elsewhere.test/").text == "other"
    assert run.calls("daemon.request") == 0


def test_async_requests_meet_the_same_faults(
    shared_daemon: DaemonProcess, client: Callable[..., DaemonBackend], baseline: dict[str, Any]
) -> None:
    backend = client(shared_daemon.base_url)

    async def main() -> list[object]:
        seen: list[object] = []
        for _ in range(3):
            try:
                seen.append(await backend.agenerate(PROMPT, SHORT))
            except (RateLimited, DaemonUnavailable) as exc:
                seen.append(type(exc))
        return seen

    with faults.inject("daemon.request=@1ratelimit->@2refuse", daemon=shared_daemon):
        assert asyncio.run(main()) == [RateLimited, DaemonUnavailable, baseline["text"]]


# ---------------------------------------------------------------------------- streams


def test_stream_stall_is_caught_by_the_guard_with_the_partial_text(
    shared_daemon: DaemonProcess,
    client: Callable[..., DaemonBackend],
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    backend = client(shared_daemon.base_url)
    guard = StreamGuard(first_token=10.0, idle=5.0, clock=vclock)
    with faults.inject("daemon.stream=@1stall(after=3)", daemon=shared_daemon, clock=vclock):
        with pytest.raises(StreamStalled) as stalled:
            guard.collect(backend.stream(PROMPT, SHORT))
        assert guard.collect(backend.stream(PROMPT, SHORT)).text == "".join(baseline["chunks"])
    assert stalled.value.partial == "".join(baseline["chunks"][:3])
    assert vclock.now() == pytest.approx(5.0)


def test_stream_truncate_ends_cleanly_and_corrupt_is_invalid_output(
    shared_daemon: DaemonProcess, client: Callable[..., DaemonBackend], baseline: dict[str, Any]
) -> None:
    backend = client(shared_daemon.base_url)
    with faults.inject("daemon.stream=@1truncate(after=2)->@2corrupt", daemon=shared_daemon) as run:
        stream = backend.stream(PROMPT, SHORT)
        assert list(stream) == baseline["chunks"][:2]
        with pytest.raises(InvalidOutput, match="invalid JSON"):
            list(backend.stream(PROMPT, SHORT))
        assert backend.generate(PROMPT, SHORT) == baseline["text"]  # not a stream: uncounted
    assert run.calls("daemon.stream") == 2


def test_the_daemon_is_killed_after_the_third_chunk_of_the_second_stream(
    spawn: Callable[..., DaemonProcess],
    client: Callable[..., DaemonBackend],
    baseline: dict[str, Any],
) -> None:
    journal = Journal()
    own = spawn(journal=journal)
    backend = client(own.base_url)
    with faults.inject("daemon.stream=@2lost(after=3)", daemon=own, journal=journal):
        assert list(backend.stream(PROMPT, SHORT)) == baseline["chunks"]
        stream = backend.stream(PROMPT, SHORT)
        with pytest.raises(DaemonLost) as lost:
            list(stream)
        with pytest.raises(DaemonUnavailable):
            backend.generate(PROMPT, SHORT)
    assert lost.value.partial == "".join(baseline["chunks"][:3])
    assert not own.alive
    kinds = [e.kind for e in journal.events()]
    assert kinds[-2:] == ["fault.injected", "daemon.down"]
    assert journal.events(DaemonDown)[-1].reason == "killed"


# ---------------------------------------------------------------------------- process


def test_process_lost_and_restart(
    spawn: Callable[..., DaemonProcess],
    client: Callable[..., DaemonBackend],
    baseline: dict[str, Any],
) -> None:
    own = spawn()
    backend = client(own.base_url)
    first_pid = own.pid
    with faults.inject("daemon.process=@1restart->@3lost", daemon=own):
        assert backend.generate(PROMPT, SHORT) == baseline["text"]
        assert own.pid not in (None, first_pid)
        assert backend.generate(PROMPT, SHORT) == baseline["text"]
        with pytest.raises(DaemonUnavailable):
            backend.generate(PROMPT, SHORT)
    assert not own.alive


def test_a_paused_daemon_makes_the_read_timeout_fire_then_resumes_real_time(
    spawn: Callable[..., DaemonProcess], client: Callable[..., DaemonBackend]
) -> None:
    own = spawn()
    impatient = client(own.base_url, timeouts=Timeouts(read=0.3))
    # the timer resumes the daemon 2 s after the pause: this read timeout outlasts it, and
    # the answer that follows, on a loaded machine; only a timer that never fires reaches it
    patient = client(own.base_url, timeouts=Timeouts(read=30.0))
    # The pause lasts well past the read timeout (2 s against 0.3 s), so the daemon is still
    # paused when the timeout fires, however late a busy machine runs this thread
    with faults.inject("daemon.process=@1pause(2s)", daemon=own):
        started = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="busy or frozen") as timed_out:
            impatient.generate(PROMPT, SHORT)
        assert time.perf_counter() - started >= 0.3
        assert timed_out.value.budget == 0.3  # the read timeout ended the wait, not an answer
        assert _paused(own)
        assert patient.generate(PROMPT, SHORT)  # resumed by the timer, 2 s after pausing
        assert not _paused(own)
        assert time.perf_counter() - started >= 2.0


def test_under_a_virtual_clock_the_pause_ends_once_the_clock_passes_it_real_time(
    spawn: Callable[..., DaemonProcess], client: Callable[..., DaemonBackend], vclock: VirtualClock
) -> None:
    own = spawn()
    backend = client(own.base_url, timeouts=Timeouts(read=0.2))  # for the paused daemon
    patient = client(own.base_url)  # for the live one: 0.2 s is too short on a busy machine
    with faults.inject("daemon.process=@1pause(10s)->@3pause(forever)", daemon=own, clock=vclock):
        with pytest.raises(DeadlineExceeded):
            backend.generate(PROMPT, SHORT)
        vclock.advance(10.0)
        assert patient.generate(PROMPT, SHORT)  # the request resumes it first
        with pytest.raises(DeadlineExceeded):
            backend.generate(PROMPT, SHORT)
        assert _paused(own)
    assert not _paused(own)  # uninstalling resumes what it paused
    assert patient.generate(PROMPT, SHORT)


def test_the_proxy_address_is_a_daemon_address_and_lost_resets_through_it(
    shared_daemon: DaemonProcess, client: Callable[..., DaemonBackend], baseline: dict[str, Any]
) -> None:
    assert shared_daemon.port is not None
    with FaultProxy(upstream=(shared_daemon.host, shared_daemon.port)) as proxy:
        backend = client(proxy.url)
        with faults.inject("daemon.request=@2lost", proxy=proxy) as run:
            assert backend.generate(PROMPT, SHORT) == baseline["text"]
            with pytest.raises(DaemonLost):
                backend.generate(PROMPT, SHORT)
            assert backend.generate(PROMPT, SHORT) == baseline["text"]
        assert proxy.stats.resets >= 1  # a real reset, by the proxy
        assert proxy.toxics == ()
    assert run.calls("daemon.request") == 3


def test_daemon_sites_without_a_daemon_fault_nothing_and_say_why(
    shared_daemon: DaemonProcess, client: Callable[..., DaemonBackend], baseline: dict[str, Any]
) -> None:
    backend = client(shared_daemon.base_url)
    with faults.inject("daemon.process=lost;daemon.request=1*refuse") as run:
        assert backend.generate(PROMPT, SHORT) == baseline["text"]
    assert shared_daemon.alive
    assert run.calls("daemon.request") == run.injected("daemon.process") == 0
    reasons = {u.site: u.reason for u in run.unreached()}
    assert set(reasons) == {"daemon.process", "daemon.request"}
    assert "has no daemon to act on" in reasons["daemon.request"]
    _assert_restored()


def test_traffic_to_another_server_is_untouched_and_named(
    shared_daemon: DaemonProcess, client: Callable[..., DaemonBackend], baseline: dict[str, Any]
) -> None:
    elsewhere = faults.Target("http://127.0.0.1:9")  # the discard port: nothing listens
    backend = client(shared_daemon.base_url)
    with faults.inject("daemon.request=refuse", daemon=elsewhere) as run:
        assert backend.generate(PROMPT, SHORT) == baseline["text"]
    assert run.calls("daemon.request") == 0
    [missed] = run.unreached()
    assert f"127.0.0.1:{shared_daemon.port} x1" in missed.reason
    assert "127.0.0.1:9" in missed.reason


def test_a_base_url_names_the_target(
    shared_daemon: DaemonProcess, client: Callable[..., DaemonBackend]
) -> None:
    backend = client(shared_daemon.base_url.replace("127.0.0.1", "localhost"))
    with (
        faults.inject("daemon.request=1*refuse", daemon=shared_daemon.base_url) as run,
        pytest.raises(DaemonUnavailable),
    ):
        backend.generate(PROMPT, SHORT)
    assert run.injected("daemon.request") == 1
    assert run.unreached() == []


def test_daemon_process_on_a_target_without_its_process_is_an_error() -> None:
    target = faults.Target("http://127.0.0.1:9")
    with pytest.raises(RuntimeError, match="needs the server's process"):
        faults.inject("daemon.process=lost", daemon=target).install()
    _assert_restored()
    with pytest.raises(RuntimeError, match="needs the server's process"):
        target.pause()
    with pytest.raises(RuntimeError, match="restart needs a DaemonProcess"):
        target.restart()


def test_a_target_url_must_name_a_host() -> None:
    with pytest.raises(ValueError, match="not an http"):
        faults.Target("127.0.0.1:8080")


def test_async_streams_meet_the_stream_faults(
    shared_daemon: DaemonProcess, client: Callable[..., DaemonBackend], baseline: dict[str, Any]
) -> None:
    backend = client(shared_daemon.base_url)

    async def main() -> tuple[list[str], type[BaseException] | None]:
        cut = [chunk async for chunk in backend.astream(PROMPT, SHORT)]
        try:
            [chunk async for chunk in backend.astream(PROMPT, SHORT)]
        except InvalidOutput as exc:
            return cut, type(exc)
        return cut, None

    with faults.inject("daemon.stream=@1truncate(after=2)->@2corrupt", daemon=shared_daemon) as run:
        assert asyncio.run(main()) == (baseline["chunks"][:2], InvalidOutput)
    assert run.injected("daemon.stream") == 2
