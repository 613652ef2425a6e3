"""The daemon.* faults reach ``langchain_openai.ChatOpenAI`` (which sends through the
official openai client, hence httpx2) against a real ``llama_cpp.server`` child process.

langchain re-raises openai's errors as its own subclasses of them
(``OpenAIConnectionError(openai.APIConnectionError)``, ``OpenAIRateLimitError``,
``OpenAIAPIError(openai.InternalServerError)``, ``OpenAITimeoutError``), chained to the
openai error it caught. ``max_retries=0``: openai's own retries are covered in
test_reach_openai.py.

Two things about the setup: langchain-openai sends ``max_tokens`` as
``max_completion_tokens``, which llama-cpp-python's server ignores, so the length goes in
``extra_body``; and each model gets httpx2 clients of the test's own, closed at teardown
(langchain's default ones are cached for the whole process). Only ``invoke``/``ainvoke``
and ``stream`` are used: nothing here counts tokens, which would need tiktoken to download
its encodings. Hangs run on a VirtualClock; real time is the daemon's own work.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx2
import openai
import pytest
from langchain_openai import ChatOpenAI
from langchain_openai.chat_models.base import (
    OpenAIAPIError,
    OpenAIConnectionError,
    OpenAIRateLimitError,
    OpenAITimeoutError,
)

import faults
from pytest_resilience.backends.daemon import DaemonProcess, ServerOptions
from pytest_resilience.core.clock import VirtualClock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

PROMPT = "Hi"
TOKENS = 8


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


@pytest.fixture
def model(shared_daemon: DaemonProcess) -> Iterator[Callable[..., ChatOpenAI]]:
    """``model(**kw)``: a ChatOpenAI for the daemon (or ``to=``), its httpx2 client closed
    after. An async test passes an ``http_async_client`` it closes on its own loop."""
    sync_clients: list[httpx2.Client] = []

    def make(*, to: DaemonProcess | None = None, **kw: Any) -> ChatOpenAI:
        where = to or shared_daemon
        sync_clients.append(httpx2.Client())
        return ChatOpenAI(
            base_url=where.base_url + "/v1",
            api_key="x",  # type: ignore[arg-type]  # a str is accepted and made a SecretStr
            model=where.alias,
            max_retries=0,
            temperature=0,
            extra_body={"max_tokens": TOKENS},
            http_client=sync_clients[-1],
            **kw,
        )

    yield make
    for c in sync_clients:
        c.close()


@pytest.fixture(scope="module")
def baseline(shared_daemon: DaemonProcess) -> dict[str, object]:
    """What invoke and stream answer with no fault (greedy: the same every time)."""
    with httpx2.Client() as http:
        llm = ChatOpenAI(
            base_url=shared_daemon.base_url + "/v1",
            api_key="x",  # type: ignore[arg-type]
            model=shared_daemon.alias,
            max_retries=0,
            temperature=0,
            extra_body={"max_tokens": TOKENS},
            http_client=http,
        )
        return {"invoke": llm.invoke(PROMPT).content, "stream": pieces(llm)}


def pieces(llm: ChatOpenAI) -> list[object]:
    """The content of every chunk ``stream`` yields."""
    return [chunk.content for chunk in llm.stream(PROMPT)]


def test_invoke_and_stream_answer_and_each_request_is_counted(
    shared_daemon: DaemonProcess, model: Callable[..., ChatOpenAI], baseline: dict[str, object]
) -> None:
    llm = model()
    chunks = baseline["stream"]
    assert isinstance(chunks, list)
    assert "".join(map(str, chunks)) == baseline["invoke"]
    with faults.inject("daemon.request=@9refuse", daemon=shared_daemon) as run:
        assert llm.invoke(PROMPT).content == baseline["invoke"]
        assert pieces(llm) == chunks
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (2, 0)


@pytest.mark.parametrize("call", ["invoke", "stream"])
def test_refuse_is_langchains_openaiconnectionerror(
    shared_daemon: DaemonProcess, model: Callable[..., ChatOpenAI], call: str
) -> None:
    llm = model()
    with (
        faults.inject("daemon.request=refuse", daemon=shared_daemon) as run,
        pytest.raises(OpenAIConnectionError) as caught,
    ):
        llm.invoke(PROMPT) if call == "invoke" else pieces(llm)
    assert isinstance(caught.value, openai.APIConnectionError)
    cause = caught.value.__cause__
    assert type(cause) is openai.APIConnectionError  # openai's, re-raised as langchain's
    assert isinstance(cause.__cause__, httpx2.ConnectError)
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (1, 1)


@pytest.mark.parametrize("call", ["invoke", "stream"])
def test_ratelimit_is_langchains_openairatelimiterror(
    shared_daemon: DaemonProcess, model: Callable[..., ChatOpenAI], call: str
) -> None:
    llm = model()
    spec = "daemon.request=ratelimit(retry_after=10ms)"
    with (
        faults.inject(spec, daemon=shared_daemon) as run,
        pytest.raises(OpenAIRateLimitError) as caught,
    ):
        llm.invoke(PROMPT) if call == "invoke" else pieces(llm)
    error = caught.value
    assert isinstance(error, openai.RateLimitError)
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.response.headers["retry-after"] == "0.01"
    assert type(error.__cause__) is openai.RateLimitError
    assert run.injected("daemon.request") == 1


def test_status_500_is_langchains_openaiapierror(
    shared_daemon: DaemonProcess, model: Callable[..., ChatOpenAI]
) -> None:
    llm = model()
    with (
        faults.inject("daemon.request=status(500)", daemon=shared_daemon) as run,
        pytest.raises(OpenAIAPIError) as caught,
    ):
        llm.invoke(PROMPT)
    assert isinstance(caught.value, openai.InternalServerError)
    assert caught.value.status_code == 500
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "server_error"
    assert run.injected("daemon.request") == 1


def test_timeout_is_langchains_openaitimeouterror_at_its_own_timeout(
    shared_daemon: DaemonProcess, model: Callable[..., ChatOpenAI]
) -> None:
    clock = VirtualClock()
    llm = model(timeout=5.0)
    with (
        faults.inject("daemon.request=timeout", daemon=shared_daemon, clock=clock) as run,
        pytest.raises(OpenAITimeoutError) as caught,
    ):
        llm.invoke(PROMPT)
    assert isinstance(caught.value, openai.APITimeoutError)
    assert clock.now() == 5.0
    assert run.injected("daemon.request") == 1


def test_stream_truncate_ends_the_stream_cleanly_after_two_chunks(
    shared_daemon: DaemonProcess, model: Callable[..., ChatOpenAI], baseline: dict[str, object]
) -> None:
    llm = model()
    chunks = baseline["stream"]
    assert isinstance(chunks, list)
    with faults.inject("daemon.stream=1*truncate(after=2)", daemon=shared_daemon) as run:
        cut = pieces(llm)
        assert llm.invoke(PROMPT).content == baseline["invoke"]  # not a stream: not counted
    # the role chunk and one token, then langchain's own closing chunk: no error
    assert cut == [*chunks[:2], ""]
    assert (run.calls("daemon.stream"), run.injected("daemon.stream")) == (1, 1)


def test_process_lost_kills_the_daemon_and_langchain_cannot_connect(
    own_daemon: DaemonProcess, model: Callable[..., ChatOpenAI]
) -> None:
    llm = model(to=own_daemon)
    with (
        faults.inject("daemon.process=1*lost", daemon=own_daemon) as run,
        pytest.raises(OpenAIConnectionError) as caught,
    ):
        llm.invoke(PROMPT)
    assert not own_daemon.alive
    assert caught.value.__cause__ is not None
    assert isinstance(caught.value.__cause__.__cause__, httpx2.ConnectError)
    assert run.injected("daemon.process") == 1


def test_stream_lost_mid_answer_is_openaiconnectionerror(
    own_daemon: DaemonProcess, model: Callable[..., ChatOpenAI]
) -> None:
    llm = model(to=own_daemon)
    seen: list[object] = []

    def read() -> None:
        seen.extend(chunk.content for chunk in llm.stream(PROMPT))

    with (
        faults.inject("daemon.stream=lost(after=2)", daemon=own_daemon) as run,
        pytest.raises(OpenAIConnectionError) as caught,
    ):
        read()
    assert len(seen) == 2
    assert caught.value.__cause__ is not None
    assert isinstance(caught.value.__cause__.__cause__, httpx2.RemoteProtocolError)
    assert not own_daemon.alive
    assert run.injected("daemon.stream") == 1


def test_async_invoke_meets_the_same_faults(
    shared_daemon: DaemonProcess, model: Callable[..., ChatOpenAI], baseline: dict[str, object]
) -> None:
    async def main() -> list[object]:
        seen: list[object] = []
        async with httpx2.AsyncClient() as http:
            llm = model(http_async_client=http)
            for _ in range(3):
                try:
                    seen.append((await llm.ainvoke(PROMPT)).content)
                except openai.APIError as exc:
                    seen.append(type(exc))
        return seen

    with faults.inject("daemon.request=@1refuse->@2status(503)", daemon=shared_daemon) as run:
        assert asyncio.run(main()) == [OpenAIConnectionError, OpenAIAPIError, baseline["invoke"]]
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (3, 2)
