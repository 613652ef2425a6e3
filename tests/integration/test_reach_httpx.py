"""Every daemon.* fault kind reaches plain httpx and httpx2 clients, sync and async, against
the real daemon, and each looks to the client like the real failure.

httpx2 is the package the official openai client sends with: a hook on httpx alone never
saw it. Waits run on a VirtualClock (asyncio on its loop); the daemon itself is real.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from typing import TYPE_CHECKING, Any

import pytest

import faults
from pytest_resilience.backends.daemon import DaemonProcess, ServerOptions
from pytest_resilience.core.clock import VirtualClock

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from types import ModuleType

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

BODY = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.0, "seed": 1}
PACKAGES = ["httpx", "httpx2"]


@pytest.fixture(params=PACKAGES)
def hx(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = pytest.importorskip(str(request.param))
    return module


@pytest.fixture(scope="module")
def shared_daemon(tiny_model_path: Path) -> Iterator[DaemonProcess]:
    """One daemon for the tests that leave it running."""
    with DaemonProcess(tiny_model_path, ServerOptions(n_ctx=1024)) as d:
        yield d


@pytest.fixture
def own_daemon(tiny_model_path: Path) -> Iterator[DaemonProcess]:
    """A daemon of the test's own, to kill."""
    with DaemonProcess(tiny_model_path, ServerOptions(n_ctx=1024)) as d:
        yield d


def _post(hx: ModuleType, url: str, **body: Any) -> Any:
    with hx.Client(timeout=5.0) as client:
        return client.post(f"{url}/v1/completions", json={**BODY, **body})


def _events(hx: ModuleType, url: str, timeout: float | None = 5.0) -> list[str]:
    """The data of every SSE event of a streamed completion, [DONE] included."""
    with (
        hx.Client(timeout=timeout) as client,
        client.stream("POST", f"{url}/v1/completions", json={**BODY, "stream": True}) as answer,
    ):
        return [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]


def _events_killed_after(hx: ModuleType, daemon: DaemonProcess, n: int) -> None:
    """Read a streamed answer and really SIGKILL the daemon after ``n`` lines (a long
    answer, so that the daemon is still sending when it dies, however busy the machine)."""
    body = {**BODY, "stream": True, "max_tokens": 512}
    with (
        hx.Client(timeout=5.0) as client,
        client.stream("POST", f"{daemon.base_url}/v1/completions", json=body) as answer,
    ):
        for i, _ in enumerate(answer.iter_lines()):
            if i == n:
                daemon.kill()


def _text(data: str) -> str:
    text: str = json.loads(data)["choices"][0]["text"]
    return text


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("daemon.request=refuse", "ConnectError"),
        ("daemon.request=lost", "RemoteProtocolError"),
        ("daemon.request=timeout", "ReadTimeout"),
        ("daemon.request=latency(10s)", "ReadTimeout"),  # longer than the client's 5 s
        ("daemon.request=raise(ConnectionAbortedError)", "ConnectionAbortedError"),
    ],
)
def test_request_failures_are_the_clients_own(
    hx: ModuleType, shared_daemon: DaemonProcess, spec: str, error: str
) -> None:
    clock = VirtualClock()
    expected = getattr(hx, error, None) or getattr(builtins, error)
    with (
        faults.inject(spec, daemon=shared_daemon, clock=clock) as run,
        pytest.raises(expected) as got,
    ):
        _post(hx, shared_daemon.base_url)
    assert type(got.value) is expected
    assert run.injected("daemon.request") == 1
    if "timeout" in spec or "latency" in spec:
        assert clock.now() == 5.0  # the client's own read timeout, in virtual time


def test_latency_shorter_than_the_timeout_delays_the_real_answer(
    hx: ModuleType, shared_daemon: DaemonProcess
) -> None:
    clock = VirtualClock()
    with faults.inject("daemon.request=latency(2s)", daemon=shared_daemon, clock=clock) as run:
        answer = _post(hx, shared_daemon.base_url)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["text"]
    assert clock.now() == 2.0
    assert run.injected("daemon.request") == 1


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("daemon.request=ratelimit(retry_after=7s)", (429, "7", "rate_limit_error")),
        ("daemon.request=status(500)", (500, None, "server_error")),
        ("daemon.request=status(503, retry_after=500ms)", (503, "0.5", "server_error")),
    ],
)
def test_http_errors_carry_the_status_and_an_openai_error_body(
    hx: ModuleType, shared_daemon: DaemonProcess, spec: str, want: tuple[int, str | None, str]
) -> None:
    status, retry_after, kind = want
    with faults.inject(spec, daemon=shared_daemon) as run:
        answer = _post(hx, shared_daemon.base_url)
        assert _post(hx, shared_daemon.base_url).status_code == status  # every request: no count
    assert answer.status_code == status
    assert answer.headers.get("retry-after") == retry_after
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["type"] == kind
    assert "fault injected at daemon.request" in error["message"]
    with pytest.raises(hx.HTTPStatusError):
        answer.raise_for_status()
    assert run.injected("daemon.request") == 2


def test_stream_truncate_and_corrupt_act_on_the_events(
    hx: ModuleType, shared_daemon: DaemonProcess
) -> None:
    whole = _events(hx, shared_daemon.base_url)
    assert whole[-1] == "[DONE]"
    assert len(whole) > 3
    with faults.inject("daemon.stream=@1truncate(after=2)->@2corrupt", daemon=shared_daemon) as run:
        cut = _events(hx, shared_daemon.base_url)
        bad = _events(hx, shared_daemon.base_url)
    assert [_text(d) for d in cut[:-1]] == [_text(d) for d in whole[:2]]
    assert cut[-1] == "[DONE]"
    assert len(bad) == len(whole)
    for data in bad[:-1]:
        with pytest.raises(json.JSONDecodeError):
            json.loads(data)
    assert run.injected("daemon.stream") == 2


def test_a_stall_ends_at_the_clients_read_timeout(
    hx: ModuleType, shared_daemon: DaemonProcess
) -> None:
    clock = VirtualClock()
    with (
        faults.inject("daemon.stream=stall(after=1)", daemon=shared_daemon, clock=clock) as run,
        pytest.raises(hx.ReadTimeout),
    ):
        _events(hx, shared_daemon.base_url, timeout=5.0)
    assert clock.now() == 5.0
    assert run.injected("daemon.stream") == 1


def test_a_stall_that_nothing_can_end_is_named(
    hx: ModuleType, shared_daemon: DaemonProcess
) -> None:
    from pytest_resilience.core.errors import HangDetected  # noqa: PLC0415

    with (
        faults.inject("daemon.stream=stall(after=1)", daemon=shared_daemon, clock=VirtualClock()),
        pytest.raises(HangDetected, match=r"daemon\.stream"),
    ):
        _events(hx, shared_daemon.base_url, timeout=None)


def test_lost_mid_stream_is_what_a_real_kill_gives(
    hx: ModuleType, own_daemon: DaemonProcess
) -> None:
    with (
        faults.inject("daemon.stream=lost(after=2)", daemon=own_daemon) as run,
        pytest.raises(hx.TransportError) as simulated,
    ):
        _events(hx, own_daemon.base_url)
    assert not own_daemon.alive
    assert run.injected("daemon.stream") == 1
    own_daemon.start()
    with pytest.raises(hx.TransportError) as real:
        _events_killed_after(hx, own_daemon, 2)
    assert type(simulated.value) is type(real.value)


def test_the_process_is_lost_on_the_nth_request(hx: ModuleType, own_daemon: DaemonProcess) -> None:
    with faults.inject("daemon.process=@2lost", daemon=own_daemon) as run:
        assert _post(hx, own_daemon.base_url).status_code == 200
        with pytest.raises(hx.ConnectError):
            _post(hx, own_daemon.base_url)
    assert not own_daemon.alive
    assert run.injected("daemon.process") == 1


def test_traffic_to_another_server_passes_untouched(
    hx: ModuleType, shared_daemon: DaemonProcess
) -> None:
    other = faults.Target("http://127.0.0.1:9")
    with faults.inject("daemon.request=refuse", daemon=other) as run:
        assert _post(hx, shared_daemon.base_url).status_code == 200
    assert run.calls("daemon.request") == 0
    assert "went to other servers" in run.unreached()[0].reason


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        ("daemon.request=refuse", "ConnectError"),
        ("daemon.request=lost", "RemoteProtocolError"),
        ("daemon.request=timeout", "ReadTimeout"),
        ("daemon.request=status(503)", 503),
        ("daemon.stream=truncate(after=1)", 1),
    ],
)
def test_async_clients_meet_the_same_faults(
    hx: ModuleType, shared_daemon: DaemonProcess, spec: str, check: str | int
) -> None:
    clock = VirtualClock()

    async def main() -> Any:
        async with hx.AsyncClient(timeout=5.0) as client:
            if spec.startswith("daemon.stream"):
                body = {**BODY, "stream": True}
                async with client.stream(
                    "POST", f"{shared_daemon.base_url}/v1/completions", json=body
                ) as r:
                    return [line async for line in r.aiter_lines() if line.startswith("data: ")]
            answer = await client.post(f"{shared_daemon.base_url}/v1/completions", json=BODY)
            return answer.status_code

    # The virtual loop jumps over real socket waits too; an answer read from the daemon
    # needs a real loop (no injected wait is involved then).
    run_loop = asyncio.run if check == 1 else clock.run
    with faults.inject(spec, daemon=shared_daemon, clock=clock) as run:
        if isinstance(check, str):
            with pytest.raises(getattr(hx, check)):
                clock.run(main())
        else:
            got = run_loop(main())
            assert got == check if isinstance(got, int) else len(got) == check + 1
    assert run.injected(spec.partition("=")[0]) == 1
