"""Every retry of tenacity, stamina, backoff and the openai client, sync and async, becomes an
``app.retry`` event while a watch is open: the library, the retried callable, the attempt
that failed, the delay and the error, stamped with the watch's clock.

The sync waits run on the test's VirtualClock (``@pytest.mark.virtual_time`` moves the
libraries' ``time.sleep`` onto it), the async ones on its virtual event loop
(``clock.run``), so each test asserts the exact delays and times without waiting for them.
The openai client talks to a stub server on 127.0.0.1 that answers 429 (with a
Retry-After of a few milliseconds) before it answers.

The watch is the plugin's own, as users get it: a test that asks for the ``journal``
fixture has its app's retries recorded there, stamped with its ``clock`` (requested, or
given by ``virtual_time``; else the system clock stamps them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any

import backoff
import openai
import pytest
import stamina
import tenacity

import faults.observe
from pytest_resilience.core.analytics import summarize
from pytest_resilience.core.events import AppRetry
from pytest_resilience.core.journal import Journal
from pytest_resilience.plugin.assertions import assert_retried

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pytest_resilience.plugin.fixtures import TestClock

HERE = __name__


class Flaky:
    """Stands for a call to a model: raises (or returns) what is queued, then answers."""

    def __init__(self) -> None:
        self.outcomes: list[BaseException | None] = []
        self.calls = 0

    def __call__(self, prompt: str) -> str | None:
        self.calls += 1
        if self.outcomes:
            outcome = self.outcomes.pop(0)
            if outcome is None:
                return None
            raise outcome
        return f"answer to {prompt}"


FLAKY = Flaky()


@pytest.fixture
def flaky() -> Flaky:
    FLAKY.outcomes, FLAKY.calls = [], 0
    return FLAKY


def seen(journal: Journal) -> list[tuple[float, str, str, int, float, str]]:
    return [
        (e.time, e.library, e.source, e.attempt, e.delay, e.error) for e in journal.events(AppRetry)
    ]


REFUSED = "ConnectionError: refused"


# ----------------------------------------------------------------------------- tenacity


@tenacity.retry(
    retry=tenacity.retry_if_exception_type(ConnectionError),
    stop=tenacity.stop_after_attempt(4),
    wait=tenacity.wait_exponential(multiplier=10),
)
def tenacity_ask(prompt: str) -> str | None:
    return FLAKY(prompt)


@tenacity.retry(
    retry=tenacity.retry_if_result(lambda answer: answer is None),
    stop=tenacity.stop_after_attempt(3),
    wait=tenacity.wait_fixed(1.5),
)
def tenacity_not_none(prompt: str) -> str | None:
    return FLAKY(prompt)


@tenacity.retry(
    retry=tenacity.retry_if_exception_type(ConnectionError),
    stop=tenacity.stop_after_attempt(4),
    wait=tenacity.wait_exponential(multiplier=10),
)
async def tenacity_aask(prompt: str) -> str | None:
    await asyncio.sleep(0)
    return FLAKY(prompt)


@pytest.mark.virtual_time
def test_tenacity_sync(flaky: Flaky, journal: Journal, clock: TestClock) -> None:
    flaky.outcomes = [ConnectionError("refused"), ConnectionError("refused")]
    assert tenacity_ask("hi") == "answer to hi"
    assert seen(journal) == [
        (0.0, "tenacity", f"{HERE}.tenacity_ask", 1, 10.0, REFUSED),
        (10.0, "tenacity", f"{HERE}.tenacity_ask", 2, 20.0, REFUSED),
    ]
    assert clock.now() == 30.0
    assert_retried(journal, times=2, name="tenacity_ask", library="tenacity", error=ConnectionError)
    assert journal.events(AppRetry)[0].category == "connection"


@pytest.mark.virtual_time
def test_tenacity_retrying_a_result(flaky: Flaky, journal: Journal) -> None:
    flaky.outcomes = [None]
    assert tenacity_not_none("hi") == "answer to hi"
    assert seen(journal) == [(0.0, "tenacity", f"{HERE}.tenacity_not_none", 1, 1.5, "result: None")]
    assert journal.events(AppRetry)[0].category == "result"


@pytest.mark.virtual_time
def test_tenacity_retrying_a_block(flaky: Flaky, journal: Journal) -> None:
    flaky.outcomes = [TimeoutError("slow")]
    for attempt in tenacity.Retrying(
        wait=tenacity.wait_fixed(2), stop=tenacity.stop_after_attempt(3), name="block"
    ):
        with attempt:
            flaky("hi")
    assert seen(journal) == [(0.0, "tenacity", "block", 1, 2.0, "TimeoutError: slow")]


def test_tenacity_async(flaky: Flaky, journal: Journal, clock: TestClock) -> None:
    flaky.outcomes = [ConnectionError("refused"), ConnectionError("refused")]
    assert clock.run(tenacity_aask("hi")) == "answer to hi"
    assert seen(journal) == [
        (0.0, "tenacity", f"{HERE}.tenacity_aask", 1, 10.0, REFUSED),
        (10.0, "tenacity", f"{HERE}.tenacity_aask", 2, 20.0, REFUSED),
    ]


def test_tenacity_async_retrying_a_block(flaky: Flaky, journal: Journal, clock: TestClock) -> None:
    flaky.outcomes = [ConnectionError("refused")]

    async def main() -> None:
        async for attempt in tenacity.AsyncRetrying(wait=tenacity.wait_fixed(3), name="ablock"):
            with attempt:
                flaky("hi")

    clock.run(main())
    assert seen(journal) == [(0.0, "tenacity", "ablock", 1, 3.0, REFUSED)]


def test_a_retry_in_real_time_and_in_a_worker_thread(flaky: Flaky) -> None:
    # no virtual time: the system clock stamps the events; tenacity sleeps 1 ms, for real
    @tenacity.retry(wait=tenacity.wait_fixed(0.001), stop=tenacity.stop_after_attempt(3))
    def ask(prompt: str) -> str | None:
        return flaky(prompt)

    journal = Journal()
    flaky.outcomes = [ConnectionError("refused")]
    with faults.observe.watch(journal), ThreadPoolExecutor(1) as pool:
        assert pool.submit(ask, "hi").result() == "answer to hi"
    assert [(e.library, e.attempt, e.delay) for e in journal.events(AppRetry)] == [
        ("tenacity", 1, 0.001)
    ]


@pytest.mark.virtual_time
def test_calls_that_work_at_once_record_nothing(flaky: Flaky, journal: Journal) -> None:
    for ask in (tenacity_ask, stamina_ask, backoff_ask, tenacity_not_none, backoff_not_none):
        assert ask("hi") == "answer to hi"
    assert journal.events() == []
    assert flaky.calls == 5


def test_nothing_is_recorded_once_the_watch_closed(flaky: Flaky) -> None:
    @tenacity.retry(sleep=lambda seconds: None, stop=tenacity.stop_after_attempt(3))
    def ask(prompt: str) -> str | None:
        return flaky(prompt)

    journal = Journal()
    with faults.observe.watch(journal):
        pass
    flaky.outcomes = [ConnectionError("refused")]
    assert ask("hi") == "answer to hi"
    assert journal.events() == []


# ------------------------------------------------------------------------------ stamina


@stamina.retry(on=ConnectionError, attempts=4, wait_initial=1.0, wait_jitter=0.0)
def stamina_ask(prompt: str) -> str | None:
    return FLAKY(prompt)


@stamina.retry(on=ConnectionError, attempts=4, wait_initial=1.0, wait_jitter=0.0)
async def stamina_aask(prompt: str) -> str | None:
    await asyncio.sleep(0)
    return FLAKY(prompt)


@pytest.mark.virtual_time
def test_stamina_sync(flaky: Flaky, journal: Journal, clock: TestClock) -> None:
    flaky.outcomes = [ConnectionError("refused"), ConnectionError("refused")]
    assert stamina_ask("hi") == "answer to hi"
    # once each: stamina's hook reports them, and the tenacity seam leaves stamina's alone
    assert seen(journal) == [
        (0.0, "stamina", f"{HERE}.stamina_ask", 1, 1.0, REFUSED),
        (1.0, "stamina", f"{HERE}.stamina_ask", 2, 2.0, REFUSED),
    ]
    assert clock.now() == 3.0


def test_stamina_async(flaky: Flaky, journal: Journal, clock: TestClock) -> None:
    flaky.outcomes = [ConnectionError("refused"), ConnectionError("refused")]
    assert clock.run(stamina_aask("hi")) == "answer to hi"
    assert seen(journal) == [
        (0.0, "stamina", f"{HERE}.stamina_aask", 1, 1.0, REFUSED),
        (1.0, "stamina", f"{HERE}.stamina_aask", 2, 2.0, REFUSED),
    ]


@pytest.mark.usefixtures("clock")  # the watch stamps the events with it: time 0.0
def test_stamina_in_its_testing_mode(flaky: Flaky, journal: Journal) -> None:
    flaky.outcomes = [ConnectionError("refused")]
    with stamina.set_testing(True, attempts=2):  # no waits at all
        assert stamina_ask("hi") == "answer to hi"
    assert seen(journal) == [(0.0, "stamina", f"{HERE}.stamina_ask", 1, 0.0, REFUSED)]


@pytest.mark.virtual_time
def test_stamina_retrying_a_block(flaky: Flaky, journal: Journal) -> None:
    flaky.outcomes = [ConnectionError("refused")]
    for attempt in stamina.retry_context(
        on=ConnectionError, attempts=3, wait_initial=0.5, wait_jitter=0.0
    ):
        with attempt:
            flaky("hi")
    assert seen(journal) == [(0.0, "stamina", "<context block>", 1, 0.5, REFUSED)]


# ------------------------------------------------------------------------------ backoff

BACKED_OFF: list[int] = []  # what the application's own on_backoff handler saw


@backoff.on_exception(
    backoff.expo,
    ConnectionError,
    max_tries=4,
    jitter=None,
    on_backoff=lambda details: BACKED_OFF.append(details["tries"]),
)
def backoff_ask(prompt: str) -> str | None:
    return FLAKY(prompt)


@backoff.on_predicate(backoff.constant, lambda answer: answer is None, interval=0.25, jitter=None)
def backoff_not_none(prompt: str) -> str | None:
    return FLAKY(prompt)


@backoff.on_exception(backoff.expo, ConnectionError, max_tries=4, jitter=None)
async def backoff_aask(prompt: str) -> str | None:
    await asyncio.sleep(0)
    return FLAKY(prompt)


@pytest.mark.virtual_time
def test_backoff_sync(flaky: Flaky, journal: Journal, clock: TestClock) -> None:
    BACKED_OFF.clear()
    flaky.outcomes = [ConnectionError("refused"), ConnectionError("refused")]
    assert backoff_ask("hi") == "answer to hi"
    assert seen(journal) == [
        (0.0, "backoff", f"{HERE}.backoff_ask", 1, 1.0, REFUSED),
        (1.0, "backoff", f"{HERE}.backoff_ask", 2, 2.0, REFUSED),
    ]
    assert BACKED_OFF == [1, 2]  # the application's handlers still run
    assert clock.now() == 3.0


@pytest.mark.virtual_time
def test_backoff_retrying_a_result(flaky: Flaky, journal: Journal) -> None:
    flaky.outcomes = [None, None]
    assert backoff_not_none("hi") == "answer to hi"
    assert seen(journal) == [
        (0.0, "backoff", f"{HERE}.backoff_not_none", 1, 0.25, "result: None"),
        (0.25, "backoff", f"{HERE}.backoff_not_none", 2, 0.25, "result: None"),
    ]


def test_backoff_async(flaky: Flaky, journal: Journal, clock: TestClock) -> None:
    flaky.outcomes = [ConnectionError("refused"), ConnectionError("refused")]
    assert clock.run(backoff_aask("hi")) == "answer to hi"
    assert seen(journal) == [
        (0.0, "backoff", f"{HERE}.backoff_aask", 1, 1.0, REFUSED),
        (1.0, "backoff", f"{HERE}.backoff_aask", 2, 2.0, REFUSED),
    ]


# ------------------------------------------------------------------------------- openai

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "stub",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
}


class _Stub(HTTPServer):
    limited = 0  # how many requests to answer 429 first
    retry_after_ms = 5
    requests = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Stub

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.server.requests += 1
        if self.server.limited > 0:
            self.server.limited -= 1
            self._answer(429, {"error": {"message": "slow down", "type": "rate_limit"}})
        else:
            self._answer(200, COMPLETION)

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        if status == 429:
            self.send_header("retry-after-ms", str(self.server.retry_after_ms))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[_Stub]:
    """A model server on 127.0.0.1 that answers 429 ``limited`` times (HTTP/1.0: each
    connection closes after its answer), then a chat completion."""
    server = _Stub(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), name="openai-stub")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _url(server: _Stub) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}/v1"


MESSAGES: Any = [{"role": "user", "content": "Hi"}]


@pytest.mark.virtual_time
def test_openai_sync(stub: _Stub, journal: Journal, clock: TestClock) -> None:
    stub.limited = 2
    with openai.OpenAI(base_url=_url(stub), api_key="x", max_retries=3) as client:
        done = client.chat.completions.create(model="stub", messages=MESSAGES)
    assert done.choices[0].message.content == "hi"
    assert stub.requests == 3
    events = journal.events(AppRetry)
    assert [(e.time, e.library, e.source, e.attempt, e.delay) for e in events] == [
        (0.0, "openai", "POST /v1/chat/completions", 1, 0.005),
        (0.005, "openai", "POST /v1/chat/completions", 2, 0.005),
    ]
    assert events[0].error.startswith("HTTPStatusError: Client error '429 Too Many Requests'")
    assert events[0].category == "rate_limited"
    assert_retried(journal, times=2, library="openai", error="429")


def test_openai_async(stub: _Stub, journal: Journal) -> None:
    stub.limited, stub.retry_after_ms = 1, 1  # a real 1 ms wait

    async def main() -> str | None:
        async with openai.AsyncOpenAI(base_url=_url(stub), api_key="x", max_retries=2) as c:
            done = await c.chat.completions.create(model="stub", messages=MESSAGES)
        return done.choices[0].message.content

    assert asyncio.run(main()) == "hi"
    assert [(e.library, e.source, e.attempt, e.delay) for e in journal.events(AppRetry)] == [
        ("openai", "POST /v1/chat/completions", 1, 0.001)
    ]


@pytest.mark.virtual_time
def test_openai_connection_errors(journal: Journal) -> None:
    # nothing listens there: each attempt is refused, and openai retries it
    with (
        openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x", max_retries=2) as client,
        pytest.raises(openai.APIConnectionError),
    ):
        client.chat.completions.create(model="stub", messages=MESSAGES)
    events = journal.events(AppRetry)
    assert [(e.library, e.source, e.attempt) for e in events] == [
        ("openai", "POST /v1/chat/completions", 1),
        ("openai", "POST /v1/chat/completions", 2),
    ]
    assert all(e.error.startswith("ConnectError: ") for e in events), events
    assert_retried(journal, times=2, error="ConnectError")


@pytest.mark.virtual_time
def test_openai_retry_log_stays_as_quiet_as_it_was(
    stub: _Stub, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    # the watch lowers openai's logger to INFO to see the retries; what its own level
    # would have dropped, no handler sees
    caplog.set_level(logging.WARNING, logger="openai")  # as it is unless told (--log-level)
    stub.limited = 1
    with openai.OpenAI(base_url=_url(stub), api_key="x", max_retries=2) as client:
        client.chat.completions.create(model="stub", messages=MESSAGES)
        assert [r for r in caplog.records if r.name.startswith("openai")] == []
        caplog.set_level(logging.INFO, logger="openai")  # now the application wants them
        stub.limited = 1
        client.chat.completions.create(model="stub", messages=MESSAGES)
    shown = [r.getMessage() for r in caplog.records if r.name == "openai._base_client"]
    assert shown == ["Retrying request in 0.005000 seconds (retry 1 of 2)"]
    assert len(journal.events(AppRetry)) == 2
    logger = logging.getLogger("openai._base_client")
    caplog.set_level(logging.ERROR, logger="openai._base_client")  # on the logger itself
    stub.limited = 1
    with openai.OpenAI(base_url=_url(stub), api_key="x", max_retries=2) as client:
        client.chat.completions.create(model="stub", messages=MESSAGES)
    assert logger.level == logging.ERROR
    assert len(journal.events(AppRetry)) == 2  # its INFO records are no longer made at all


# -------------------------------------------------------------------------- the summary


@pytest.mark.virtual_time
def test_the_summary_counts_every_library(flaky: Flaky, journal: Journal) -> None:
    for ask in (tenacity_ask, stamina_ask, backoff_ask):
        flaky.outcomes = [ConnectionError("refused")]
        assert ask("hi") == "answer to hi"
    summary = summarize(journal)
    assert summary.retries == 3
    assert summary.app_retries == {"tenacity": 1, "stamina": 1, "backoff": 1}
    assert summary.errors_by_category == {"connection": 3}
