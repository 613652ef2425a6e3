"""Each simulated failure beside the real one: the same caller, the same site, the same
exception type and the same message shape (digits aside: token counts, ports, sizes).

Every failure that can be provoked for real on this machine is, once per client:

- a prompt longer than the context, in process (the tiny model with ``n_ctx=256``) against
  ``llama.generate`` / ``llama.chat`` / ``llama.stream=overflow``;
- the same through the daemon (``python -m llama_cpp.server`` with ``n_ctx=256``) against
  ``daemon.request=overflow`` and ``daemon.stream=overflow``, for httpx, openai (httpx2),
  requests (urllib3), aiohttp, our own ``DaemonBackend`` and the wire route;
- a model load that cannot allocate its context (``RLIMIT_AS`` in a child process) against
  ``llama.load=oom``;
- a closed port against ``daemon.request=refuse``;
- a daemon SIGKILLed mid-stream against ``daemon.stream=lost(after=n)``;
- a failed ``GGML_ASSERT`` (a batch larger than ``n_batch`` handed to ``llama_decode``, in a
  child process) against ``llama.generate=crash``: the signal and the last words.

Every daemon here listens on 127.0.0.1 and is stopped by a fixture, also when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import openai
import pytest
import requests

import faults
from faults.proxy import FaultProxy
from faults.sites.daemon import closed_port
from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.daemon import (
    DaemonBackend,
    DaemonProcess,
    RequestRejected,
    ServerOptions,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

N_CTX = 256  # the smallest context llama.cpp makes: a few hundred words overflow it
LONG = "the " * 300  # about 300 tokens: more than N_CTX
SHORT = "Once upon a time"
TOKENS = 4
# Bounds that protect against a hang only (a dead daemon, a lost wakeup), never timing.
HTTP_TIMEOUT = 120.0


def shape(text: str) -> str:
    """A message with its numbers blanked: token counts, ports and sizes differ by nature."""
    return re.sub(r"\d+", "N", text)


@dataclass(frozen=True, slots=True)
class Seen:
    """What a caller saw: the exception (its type, its cause's type, its words) or the
    answer (its status and body, or the events of a stream)."""

    raised: str | None = None
    cause: str | None = None
    status: int | None = None
    text: str = ""


def caught(exc: BaseException) -> Seen:
    cause = exc.__cause__ or exc.__context__
    status = getattr(exc, "status_code", getattr(exc, "status", None))
    return Seen(
        raised=f"{type(exc).__module__}.{type(exc).__qualname__}",
        cause=None if cause is None else type(cause).__qualname__,
        status=status if isinstance(status, int) else None,
        text=shape(str(exc)),
    )


# ============================================================================ fixtures


@pytest.fixture(scope="module")
def small_daemon(tiny_model_path: Path) -> Iterator[DaemonProcess]:
    """A daemon whose context a few hundred words overflow; stopped after the module."""
    with DaemonProcess(tiny_model_path, ServerOptions(n_ctx=N_CTX)) as d:
        yield d


@pytest.fixture(scope="module")
def small_llama(tiny_model_path: Path) -> Iterator[Any]:
    llm = llama_cpp.Llama(
        str(tiny_model_path), n_ctx=N_CTX, n_threads=1, n_threads_batch=1, verbose=False, seed=0
    )
    yield llm
    llm.close()


@pytest.fixture
def spawn(tiny_model_path: Path) -> Iterator[Callable[[], DaemonProcess]]:
    """Daemons of the test's own, to kill; each stopped after the test, also on failure."""
    made: list[DaemonProcess] = []

    def start() -> DaemonProcess:
        made.append(DaemonProcess(tiny_model_path, ServerOptions(n_ctx=1024)))
        return made[-1].start()

    yield start
    for d in made:
        d.close()


# =========================================================== overflow, in process


def _in_process(llm: Any, how: str, prompt: str) -> tuple[bool, BaseException]:
    """Call ``how`` with ``prompt``; (whether the call itself raised, the exception)."""
    messages = [{"role": "user", "content": prompt}]
    stream = how.endswith("stream")
    try:
        if how == "generate":
            llm.create_completion(prompt, max_tokens=TOKENS)
        elif how == "call":
            llm(prompt, max_tokens=TOKENS)
        elif how == "chat":
            llm.create_chat_completion(messages, max_tokens=TOKENS)
        elif how == "stream":
            chunks = llm.create_completion(prompt, max_tokens=TOKENS, stream=True)
        else:
            chunks = llm.create_chat_completion(messages, max_tokens=TOKENS, stream=True)
    except Exception as exc:
        return True, exc
    assert stream, f"{how} did not fail"
    try:
        next(iter(chunks))
    except Exception as exc:
        return False, exc
    pytest.fail(f"{how} did not fail")


@pytest.mark.parametrize(
    ("how", "spec"),
    [
        ("generate", "llama.generate=overflow"),
        ("call", "llama.generate=overflow"),
        ("chat", "llama.chat=overflow"),
        ("stream", "llama.stream=overflow"),
        ("chat-stream", "llama.stream=overflow"),
        ("chat-stream", "llama.chat=overflow"),
    ],
)
def test_overflow_in_process_is_llama_cpps_own_error(small_llama: Any, how: str, spec: str) -> None:
    at_call, real = _in_process(small_llama, how, LONG)
    assert type(real) is ValueError
    assert re.fullmatch(r"Requested tokens \(\d+\) exceed context window of 256", str(real))
    with faults.inject(spec) as run:
        sim_at_call, simulated = _in_process(small_llama, how, SHORT)
    assert run.injected(spec.split("=", maxsplit=1)[0]) == 1
    assert type(simulated) is type(real)
    assert shape(str(simulated)) == shape(str(real))
    assert sim_at_call == at_call  # raised by the call, or at the stream's first chunk
    assert str(simulated).endswith(f"of {N_CTX}")  # the model's own context size


# ========================================================== overflow, over HTTP


def _url(daemon: DaemonProcess, proxy: FaultProxy | None) -> str:
    if proxy is None:
        return daemon.base_url
    host, port = proxy.address
    return f"http://{host}:{port}"


def _body(daemon: DaemonProcess, what: str, prompt: str) -> tuple[str, dict[str, Any]]:
    stream = what.endswith("stream")
    body: dict[str, Any]
    if what.startswith("chat"):
        messages = [{"role": "user", "content": prompt}]
        path, body = "/v1/chat/completions", {"messages": messages}
    else:
        path, body = "/v1/completions", {"prompt": prompt}
    return path, {**body, "model": daemon.alias, "max_tokens": TOKENS, "stream": stream}


def _events(lines: list[str]) -> str:
    return shape("|".join(line for line in lines if line.startswith("data:")))


def via_httpx(url: str, path: str, body: dict[str, Any]) -> Seen:
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
        if body["stream"]:
            with c.stream("POST", path, json=body) as r:
                return Seen(status=r.status_code, text=_events(list(r.iter_lines())))
        r = c.post(path, json=body)
        return Seen(status=r.status_code, text=shape(r.text))


def via_requests(url: str, path: str, body: dict[str, Any]) -> Seen:
    with requests.Session() as s:
        r = s.post(url + path, json=body, stream=body["stream"], timeout=HTTP_TIMEOUT)
        with r:
            if body["stream"]:
                lines = [line.decode() for line in r.iter_lines()]
                return Seen(status=r.status_code, text=_events(lines))
            return Seen(status=r.status_code, text=shape(r.text))


def via_aiohttp(url: str, path: str, body: dict[str, Any]) -> Seen:
    async def main() -> Seen:
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.post(url + path, json=body) as r:
            if body["stream"]:
                lines = [line.decode().rstrip("\r\n") async for line in r.content]
                return Seen(status=r.status, text=_events(lines))
            return Seen(status=r.status, text=shape(await r.text()))

    return asyncio.run(main())


def via_openai(url: str, path: str, body: dict[str, Any]) -> Seen:
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as c:
        kw = {k: v for k, v in body.items() if k != "stream"}
        try:
            if "messages" in body:
                if not body["stream"]:
                    c.chat.completions.create(**kw)
                    return Seen(text="answered")
                with c.chat.completions.create(**kw, stream=True) as s:
                    return Seen(text=f"{len(list(s))} chunks")
            if not body["stream"]:
                c.completions.create(**kw)
                return Seen(text="answered")
            with c.completions.create(**kw, stream=True) as s:
                return Seen(text=f"{len(list(s))} chunks")
        except openai.APIError as exc:
            return caught(exc)


def via_backend(url: str, path: str, body: dict[str, Any]) -> Seen:
    params = GenerationParams(max_tokens=TOKENS, temperature=0.0)
    with DaemonBackend(url) as backend:
        try:
            if body["stream"]:
                with backend.stream(body["prompt"], params) as s:
                    return Seen(text=f"{len(list(s))} chunks")
            backend.generate(body["prompt"], params)
        except Exception as exc:
            return caught(exc)
    return Seen(text="answered")


CLIENTS: dict[str, Callable[[str, str, dict[str, Any]], Seen]] = {
    "httpx": via_httpx,
    "openai": via_openai,
    "requests": via_requests,
    "aiohttp": via_aiohttp,
    "backend": via_backend,
}
OVERFLOWS = [
    (client, what)
    for client in CLIENTS
    for what in ("completion", "chat", "completion-stream", "chat-stream")
    if not (client == "backend" and what.startswith("chat"))  # it speaks completions only
]


@pytest.mark.parametrize(("client", "what"), OVERFLOWS)
def test_overflow_through_the_daemon_is_its_own_answer(
    small_daemon: DaemonProcess, client: str, what: str
) -> None:
    send = CLIENTS[client]
    path, body = _body(small_daemon, what, LONG)
    real = send(small_daemon.base_url, path, body)
    path, body = _body(small_daemon, what, SHORT)
    assert send(small_daemon.base_url, path, body) != real  # a short prompt fits
    specs = [("daemon.request=overflow", "daemon.request")]
    if what.endswith("stream"):
        specs.append(("daemon.request=off;daemon.stream=overflow", "daemon.stream"))
    for spec, site in specs:
        with faults.inject(spec, daemon=small_daemon) as run:
            simulated = send(small_daemon.base_url, path, body)
        assert run.injected(site) == 1, spec
        assert simulated == real, spec


def test_overflow_on_the_wire_is_the_daemons_answer(small_daemon: DaemonProcess) -> None:
    assert small_daemon.port is not None
    with FaultProxy(upstream=(small_daemon.host, small_daemon.port)) as proxy:
        url = _url(small_daemon, proxy)
        for what in ("completion", "chat"):
            real = via_httpx(url, *_body(small_daemon, what, LONG))
            with faults.inject(
                "daemon.request=overflow", daemon=small_daemon, proxy=proxy, route="wire"
            ) as run:
                simulated = via_httpx(url, *_body(small_daemon, what, SHORT))
            assert run.injected("daemon.request") == 1
            assert simulated == real, what
        real = via_httpx(url, *_body(small_daemon, "completion-stream", LONG))
        spec = "daemon.request=off;daemon.stream=overflow"
        with faults.inject(spec, daemon=small_daemon, proxy=proxy, route="wire") as run:
            simulated = via_httpx(url, *_body(small_daemon, "completion-stream", SHORT))
        assert run.injected("daemon.stream") == 1
        assert simulated == real


# ====================================================================== load, no memory

_LOAD_UNDER_LIMIT = textwrap.dedent(
    """
    import resource, sys
    import llama_cpp
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    # what is in use now and 64 MiB more: a context of 128 Ki tokens cannot be allocated
    resource.setrlimit(resource.RLIMIT_AS, (used + (64 << 20), used + (64 << 20)))
    try:
        llama_cpp.Llama(sys.argv[1], n_ctx=131072, n_threads=1, n_threads_batch=1, verbose=False)
    except Exception as exc:
        print(type(exc).__module__ + "." + type(exc).__qualname__)
        print(exc)
    else:
        print("loaded")
    """
)


def test_a_load_that_cannot_allocate_is_what_oom_raises(tiny_model_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _LOAD_UNDER_LIMIT, str(tiny_model_path)],
        capture_output=True,
        text=True,
        timeout=HTTP_TIMEOUT,  # a hang guard only
        check=False,
    )
    kind, message = child.stdout.splitlines()[:2]
    with faults.inject("llama.load=oom") as run, pytest.raises(Exception) as simulated:  # noqa: PT011
        llama_cpp.Llama(
            str(tiny_model_path), n_ctx=N_CTX, n_threads=1, n_threads_batch=1, verbose=False
        )
    assert run.injected("llama.load") == 1
    assert f"{type(simulated.value).__module__}.{type(simulated.value).__qualname__}" == kind
    assert shape(str(simulated.value)) == shape(message)


# ============================================================================ refused


def attempt(send: Callable[[str, str, dict[str, Any]], Seen], url: str, *args: Any) -> Seen:
    """``send(url, ...)``, with what it raised as what the caller saw."""
    try:
        return send(url, *args)
    except Exception as exc:
        return caught(exc)


@pytest.mark.parametrize("client", list(CLIENTS))
def test_refuse_is_what_a_closed_port_raises(small_daemon: DaemonProcess, client: str) -> None:
    send = CLIENTS[client]
    path, body = _body(small_daemon, "completion", SHORT)
    real = attempt(send, f"http://127.0.0.1:{closed_port('127.0.0.1')}", path, body)
    assert real.raised is not None, real
    with faults.inject("daemon.request=refuse", daemon=small_daemon) as run:
        simulated = attempt(send, small_daemon.base_url, path, body)
    assert run.injected("daemon.request") == 1
    assert simulated == real


# ==================================================================== killed mid-stream

AFTER = 2
LONG_ANSWER = 400  # tokens: the stream is still going when the daemon dies


def _lines_httpx(url: str, body: dict[str, Any], one: Callable[[], None]) -> None:
    with (
        httpx.Client(timeout=HTTP_TIMEOUT) as c,
        c.stream("POST", url + "/v1/completions", json=body) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data:"):
                one()


def _lines_requests(url: str, body: dict[str, Any], one: Callable[[], None]) -> None:
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith(b"data:"):
                one()


def _lines_aiohttp(url: str, body: dict[str, Any], one: Callable[[], None]) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", json=body) as r:
            async for line in r.content:
                if line.startswith(b"data:"):
                    one()

    asyncio.run(main())


def _chunks_openai(url: str, body: dict[str, Any], one: Callable[[], None]) -> None:
    with (
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as c,
        c.completions.create(
            model=body["model"], prompt=SHORT, max_tokens=LONG_ANSWER, stream=True
        ) as s,
    ):
        for _ in s:
            one()


def _chunks_backend(url: str, body: dict[str, Any], one: Callable[[], None]) -> None:
    params = GenerationParams(max_tokens=LONG_ANSWER, temperature=0.0)
    with DaemonBackend(url) as backend, backend.stream(SHORT, params) as s:
        for _ in s:
            one()


READERS: dict[str, Callable[[str, dict[str, Any], Callable[[], None]], None]] = {
    "httpx": _lines_httpx,
    "openai": _chunks_openai,
    "requests": _lines_requests,
    "aiohttp": _lines_aiohttp,
    "backend": _chunks_backend,
}


def _stream_then(client: str, url: str, alias: str, after_chunks: Callable[[], object]) -> Seen:
    """Stream a long answer through ``client``; ``after_chunks()`` once AFTER chunks came."""
    body: dict[str, Any] = {"prompt": SHORT, "model": alias, "max_tokens": LONG_ANSWER}
    seen = 0

    def one() -> None:
        nonlocal seen
        seen += 1
        if seen == AFTER:
            after_chunks()

    try:
        READERS[client](url, {**body, "stream": True}, one)
    except Exception as exc:
        return caught(exc)
    return Seen(text=f"ended after {seen} chunks")


@pytest.mark.parametrize("client", list(CLIENTS))
def test_lost_mid_stream_is_what_a_real_sigkill_raises(
    spawn: Callable[[], DaemonProcess], client: str
) -> None:
    killed = spawn()
    real = _stream_then(client, killed.base_url, killed.alias, killed.kill)
    assert not killed.alive
    assert real.raised is not None, real
    own = spawn()
    spec = f"daemon.request=off;daemon.stream=lost(after={AFTER})"
    with faults.inject(spec, daemon=own) as run:
        simulated = _stream_then(client, own.base_url, own.alias, lambda: None)
    assert run.injected("daemon.stream") == 1, simulated
    assert not own.alive
    assert simulated == real


# ====================================================================== in-band error


def test_an_in_band_error_reaches_each_client_as_its_own_error(
    small_daemon: DaemonProcess,
) -> None:
    spec = "daemon.request=off;daemon.stream=error(after=2)"
    path, body = _body(small_daemon, "completion-stream", SHORT)
    got: dict[str, Seen] = {}
    for client, send in CLIENTS.items():
        with faults.inject(spec, daemon=small_daemon) as run:
            got[client] = send(small_daemon.base_url, path, body)
        assert run.injected("daemon.stream") == 1, client
    event = shape(
        'data: {"error":{"code":400,"message":"the request exceeds the available context '
        'size, try increasing it","type":"exceed_context_size_error"}}'
    )
    for raw in ("httpx", "requests", "aiohttp"):
        assert got[raw].status == 200
        assert got[raw].text.count("data:") == 3
        assert got[raw].text.endswith(event), raw  # the error, and no [DONE] after it
    assert got["openai"].raised == "openai.APIError"
    assert "exceeds the available context size" in got["openai"].text
    assert got["backend"].raised == f"{RequestRejected.__module__}.RequestRejected"
    assert got["backend"].status == 400
    assert "exceeds the available context size" in got["backend"].text


def test_the_in_band_error_event_is_json_with_an_error_object() -> None:
    from faults.sites.daemon import stream_error_event  # noqa: PLC0415

    event = stream_error_event()
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    error = json.loads(event[6:])["error"]
    assert set(error) == {"message", "type", "code"}


# ============================================================================== abort

_REAL_ABORT = textwrap.dedent(
    """
    import sys
    import llama_cpp
    llm = llama_cpp.Llama(sys.argv[1], n_ctx=256, n_batch=8, n_ubatch=8, n_threads=1,
                          n_threads_batch=1, verbose=False)
    # 16 tokens in one llama_decode, past n_batch: llama.cpp asserts instead of failing
    batch = llama_cpp.llama_batch_init(16, 0, 1)
    batch.n_tokens = 16
    for i in range(16):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = 1, i, 1, False
        batch.seq_id[i][0] = 0
    print("decoding", flush=True)
    try:
        llama_cpp.llama_decode(llm.ctx, batch)
    finally:
        print("finally ran", flush=True)
    print("returned")
    """
)
_SIMULATED_ABORT = textwrap.dedent(
    """
    import sys
    import llama_cpp
    import faults
    llm = llama_cpp.Llama(sys.argv[1], n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    print("decoding", flush=True)
    with faults.inject("llama.generate=crash"):
        try:
            llm.create_completion("Once upon a time", max_tokens=4)
        finally:
            print("finally ran", flush=True)
    print("returned")
    """
)
_ASSERT_LINE = re.compile(r"\S+\.c(?:pp)?:\d+: GGML_ASSERT\(.+\) failed")


def test_a_real_ggml_assert_dies_as_crash_does(tiny_model_path: Path) -> None:
    died: dict[str, tuple[int, str, list[str]]] = {}
    for name, script in (("real", _REAL_ABORT), ("simulated", _SIMULATED_ABORT)):
        child = subprocess.run(
            [sys.executable, "-c", script, str(tiny_model_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "GGML_NO_BACKTRACE": "1"},  # no backtrace before the abort
            timeout=HTTP_TIMEOUT,  # a hang guard only
            check=False,
        )
        died[name] = (child.returncode, child.stdout, child.stderr.splitlines())
    for name, (returncode, stdout, stderr) in died.items():
        assert returncode == -signal.SIGABRT, (name, returncode, stderr)
        assert stdout == "decoding\n", name  # no finally, no return: the process is gone
        assert len(stderr) == 1, (name, stderr)  # its last words, and no Python traceback
        assert _ASSERT_LINE.fullmatch(stderr[0]), (name, stderr)
    assert "GGML_ASSERT(n_tokens_all <= cparams.n_batch)" in died["real"][2][0]
    assert died["simulated"][2][0].endswith("GGML_ASSERT(fault injected at llama.generate) failed")
