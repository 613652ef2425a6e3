"""Unit tests for the exception tree and the classifier table."""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
import httpx2
import openai
import pytest
import requests

from pytest_resilience.core.classify import (
    DEFAULT_CLASSIFIER,
    DEFAULT_RULES,
    Action,
    Category,
    Classification,
    Classifier,
    Rule,
    Severity,
    classify,
)
from pytest_resilience.core.errors import (
    BackendError,
    Cancelled,
    CircuitOpenError,
    DaemonLost,
    DaemonUnavailable,
    DeadlineExceeded,
    FallbackError,
    HangDetected,
    InvalidOutput,
    ModelNotFound,
    RateLimited,
    ResilienceError,
    ResilienceInterrupt,
    ResourceExhausted,
    RetryError,
    ServerError,
    StreamInterrupted,
    StreamStalled,
)

C, S, A = Category, Severity, Action


class HTTPError(Exception):
    """An exception shaped like a client library's: a status and maybe a response."""

    def __init__(self, message: str = "", *, status_code: int | None = None, **attrs: Any):
        super().__init__(message)
        self.status_code = status_code
        for name, value in attrs.items():
            setattr(self, name, value)


def with_response(status: int, headers: dict[str, str] | None = None) -> HTTPError:
    return HTTPError("failed", response=SimpleNamespace(status_code=status, headers=headers or {}))


def foreign(module: str, name: str, base: type[Exception] = Exception) -> type[Exception]:
    """A class that looks like a third-party one, without importing its library."""
    return type(name, (base,), {"__module__": module, "__qualname__": name})


def row(  # noqa: PLR0917 - a table row reads best positionally
    exc: BaseException, rule: str, cat: Category, sev: Severity, retry: bool, action: Action
) -> tuple[BaseException, Classification]:
    return exc, Classification(cat, sev, retry, action, None, rule)


# One row per rule of the default table, plus subclasses and look-alikes that must land on
# the same row, in table order.
ROWS: list[tuple[BaseException, Classification]] = [
    row(DeadlineExceeded(), "deadline", C.TIMEOUT, S.MEDIUM, True, A.RETRY),
    row(StreamStalled("idle", 5.0, "par"), "deadline", C.TIMEOUT, S.MEDIUM, True, A.RETRY),
    row(CircuitOpenError("d", "open"), "circuit-open", C.TRANSIENT, S.MEDIUM, False, A.FALLBACK),
    row(Cancelled(), "cancelled", C.PERMANENT, S.LOW, False, A.FAIL),
    row(RateLimited(), "rate-limited", C.RATE_LIMITED, S.LOW, True, A.RETRY_LATER),
    row(DaemonUnavailable("refused"), "daemon", C.CONNECTION, S.HIGH, True, A.FALLBACK),
    row(DaemonLost(partial="ab"), "daemon", C.CONNECTION, S.HIGH, True, A.FALLBACK),
    row(ModelNotFound("m.gguf"), "model-not-found", C.PERMANENT, S.CRITICAL, False, A.FAIL),
    row(InvalidOutput("bad json"), "invalid-output", C.TRANSIENT, S.MEDIUM, True, A.RETRY),
    row(MemoryError(), "memory", C.RESOURCE, S.HIGH, False, A.REDUCE_LOAD),
    row(ResourceExhausted("ctx"), "memory", C.RESOURCE, S.HIGH, False, A.REDUCE_LOAD),
    row(HTTPError(status_code=429), "http-429", C.RATE_LIMITED, S.LOW, True, A.RETRY_LATER),
    row(with_response(429), "http-429", C.RATE_LIMITED, S.LOW, True, A.RETRY_LATER),
    row(ServerError(503), "http-5xx", C.TRANSIENT, S.MEDIUM, True, A.RETRY),
    row(HTTPError(status_code=500), "http-5xx", C.TRANSIENT, S.MEDIUM, True, A.RETRY),
    row(with_response(504), "http-5xx", C.TRANSIENT, S.MEDIUM, True, A.RETRY),
    row(HTTPError(status_code=404), "http-4xx", C.PERMANENT, S.MEDIUM, False, A.FAIL),
    row(with_response(400), "http-4xx", C.PERMANENT, S.MEDIUM, False, A.FAIL),
    row(TimeoutError(), "timeout", C.TIMEOUT, S.MEDIUM, True, A.RETRY),
    row(socket.timeout(), "timeout", C.TIMEOUT, S.MEDIUM, True, A.RETRY),  # noqa: UP041 - on purpose
    row(httpx.ReadTimeout("slow"), "client-timeout", C.TIMEOUT, S.MEDIUM, True, A.RETRY),
    row(
        foreign("httpx", "TimeoutException")(), "client-timeout", C.TIMEOUT, S.MEDIUM, True, A.RETRY
    ),
    row(ConnectionRefusedError(), "connection", C.CONNECTION, S.HIGH, True, A.RETRY),
    row(ConnectionResetError(), "connection", C.CONNECTION, S.HIGH, True, A.RETRY),
    row(httpx.ConnectError("refused"), "client-connection", C.CONNECTION, S.HIGH, True, A.RETRY),
    row(httpx.RemoteProtocolError("x"), "client-connection", C.CONNECTION, S.HIGH, True, A.RETRY),
    row(
        RuntimeError("Rate limit hit"),
        "rate-limit-text",
        C.RATE_LIMITED,
        S.LOW,
        True,
        A.RETRY_LATER,
    ),
    row(RuntimeError("got 429"), "rate-limit-text", C.RATE_LIMITED, S.LOW, True, A.RETRY_LATER),
    row(RuntimeError("CUDA out of memory"), "oom-text", C.RESOURCE, S.HIGH, False, A.REDUCE_LOAD),
    row(
        RuntimeError("Failed to create llama_context"),
        "oom-text",
        C.RESOURCE,
        S.HIGH,
        False,
        A.REDUCE_LOAD,
    ),
    row(ValueError("OOM while loading"), "oom-text", C.RESOURCE, S.HIGH, False, A.REDUCE_LOAD),
    row(
        ValueError("Failed to load model from file"),
        "model-missing-text",
        C.PERMANENT,
        S.CRITICAL,
        False,
        A.FAIL,
    ),
    row(
        FileNotFoundError(2, "No such file or directory"),
        "model-missing-text",
        C.PERMANENT,
        S.CRITICAL,
        False,
        A.FAIL,
    ),
    row(ValueError("temperature must be >= 0"), "bad-input", C.PERMANENT, S.MEDIUM, False, A.FAIL),
    row(TypeError("unexpected keyword"), "bad-input", C.PERMANENT, S.MEDIUM, False, A.FAIL),
    row(PermissionError(13, "Permission denied"), "os", C.RESOURCE, S.HIGH, False, A.INVESTIGATE),
    row(RuntimeError("something odd"), "unknown", C.UNKNOWN, S.MEDIUM, False, A.INVESTIGATE),
    row(KeyError("x"), "unknown", C.UNKNOWN, S.MEDIUM, False, A.INVESTIGATE),
]


@pytest.mark.parametrize(
    ("exc", "expected"), ROWS, ids=[f"{type(e).__name__}-{c.rule}" for e, c in ROWS]
)
def test_default_table_row_by_row(exc: BaseException, expected: Classification) -> None:
    assert classify(exc) == expected


def test_every_default_rule_has_a_row() -> None:
    assert {rule.name for rule in DEFAULT_RULES} <= {c.rule for _, c in ROWS}


def test_own_errors_win_over_their_text() -> None:
    # "lost" and "429" in the message must not override what the type says
    assert classify(DaemonLost("lost: 429")).rule == "daemon"
    assert classify(InvalidOutput("out of memory in the answer")).rule == "invalid-output"


def test_retry_after_from_the_attribute() -> None:
    assert classify(RateLimited(retry_after=2)).retry_after == 2.0
    assert classify(CircuitOpenError("d", "open", 7.5)).retry_after == 7.5
    assert classify(RateLimited(retry_after=-1)).retry_after is None
    assert classify(RateLimited()).retry_after is None


def test_retry_after_from_response_headers() -> None:
    assert classify(with_response(429, {"retry-after": "3"})).retry_after == 3.0
    assert classify(with_response(503, {"retry-after": "0.5"})).retry_after == 0.5
    # an HTTP date is not parsed; a negative or junk value is ignored
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert classify(with_response(429, {"retry-after": date})).retry_after is None
    assert classify(with_response(429, {"retry-after": "-4"})).retry_after is None
    assert classify(HTTPError(status_code=429, response=SimpleNamespace())).retry_after is None


def test_a_real_httpx_status_error() -> None:
    request = httpx.Request("POST", "http://localhost/v1/completions")
    response = httpx.Response(429, headers={"Retry-After": "4"}, request=request)
    exc = httpx.HTTPStatusError("too many", request=request, response=response)
    found = classify(exc)
    assert (found.rule, found.retry_after) == ("http-429", 4.0)


def test_the_attribute_wins_over_the_header() -> None:
    exc = HTTPError(
        status_code=429, retry_after=1.0, response=SimpleNamespace(headers={"retry-after": "9"})
    )
    assert classify(exc).retry_after == 1.0


def test_status_is_read_from_status_then_status_code_then_the_response() -> None:
    assert classify(HTTPError(status=503, response=SimpleNamespace(status_code=404))).rule == (
        "http-5xx"
    )
    assert classify(HTTPError(status="503")).rule == "unknown"  # not an int: ignored


def test_dotted_names_match_the_whole_mro_without_importing() -> None:
    base = foreign("mylib.errors", "Overloaded")
    sub = foreign("mylib.client", "QueueFull", base)
    rule = Rule("mylib", C.TRANSIENT, S.LOW, True, A.RETRY, types=("mylib.errors.Overloaded",))
    classifier = DEFAULT_CLASSIFIER.extended(rule)
    assert classifier(sub()).rule == "mylib"
    assert classifier(foreign("other", "Overloaded")()).rule == "unknown"


def test_rule_conditions_must_all_match() -> None:
    rule = Rule(
        "picky",
        C.TRANSIENT,
        S.LOW,
        True,
        A.RETRY,
        types=(RuntimeError,),
        status=frozenset({418}),
        pattern=r"teapot",
    )
    assert rule.matches(HTTPError("I'm a TEAPOT", status_code=418)) is False  # not RuntimeError
    teapot = type("Teapot", (RuntimeError,), {})
    yes = teapot("I'm a TEAPOT")
    yes.status_code = 418
    assert rule.matches(yes)
    no_status = teapot("I'm a teapot")
    assert not rule.matches(no_status)
    wrong_text = teapot("kettle")
    wrong_text.status_code = 418
    assert not rule.matches(wrong_text)


def test_extended_puts_rules_first_and_leaves_the_default_alone() -> None:
    before = DEFAULT_CLASSIFIER.rules
    custom = Rule("mine", C.PERMANENT, S.HIGH, False, A.FAIL, types=(TimeoutError,))
    extended = DEFAULT_CLASSIFIER.extended(custom)
    assert extended is not DEFAULT_CLASSIFIER
    assert extended.rules == (custom, *before)
    assert classify(TimeoutError(), extended).rule == "mine"
    assert classify(TimeoutError()).rule == "timeout"
    assert DEFAULT_CLASSIFIER.rules == before


def test_callable_rules_answer_or_pass() -> None:
    seen: list[BaseException] = []

    def backend_rule(exc: BaseException) -> Classification | None:
        seen.append(exc)
        if "llama_decode returned -3" in str(exc):
            return Classification(C.RESOURCE, S.HIGH, False, A.REDUCE_LOAD, rule="kv-full")
        return None

    classifier = Classifier([backend_rule])
    assert classifier(RuntimeError("llama_decode returned -3")).rule == "kv-full"
    assert classifier(RuntimeError("other")) == classify(RuntimeError("unknown thing"))
    assert len(seen) == 2


def test_the_tree_keeps_the_standard_bases() -> None:
    assert issubclass(DeadlineExceeded, TimeoutError)
    assert issubclass(StreamStalled, DeadlineExceeded)
    assert issubclass(ResourceExhausted, MemoryError)
    assert issubclass(ResourceExhausted, BackendError)
    assert issubclass(DaemonLost, DaemonUnavailable)
    assert issubclass(DaemonUnavailable, ConnectionError)
    for cls in (RetryError, CircuitOpenError, FallbackError, StreamInterrupted):
        assert issubclass(cls, ResilienceError)
    # what stops the work is no failure: a BaseException, like asyncio.CancelledError
    for signal in (Cancelled, HangDetected):
        assert issubclass(signal, ResilienceInterrupt)
        assert issubclass(signal, BaseException)
        assert not issubclass(signal, Exception)
        assert not issubclass(signal, ResilienceError)


def test_messages_say_what_happened() -> None:
    last = TimeoutError("slow")
    assert (
        str(RetryError(3, last, "budget"))
        == "gave up after 3 attempts (budget): TimeoutError: slow"
    )
    assert str(RetryError(1, None, result="")) == "gave up after 1 attempt: result rejected: ''"
    assert str(CircuitOpenError("daemon", "open", 2.5)) == "circuit 'daemon' is open; retry in 2.5s"
    assert str(ServerError(502, "bad gateway")) == "server error 502: bad gateway"
    assert (
        str(ModelNotFound("m.gguf", "bad magic"))
        == "model not found or invalid: m.gguf (bad magic)"
    )
    stalled = StreamStalled("first_token", 30.0, "abc")
    assert (stalled.budget, stalled.partial, stalled.which) == (30.0, "abc", "first_token")
    assert "3 characters received" in str(stalled)
    assert str(StreamInterrupted("lost", "ab")) == "stream interrupted (lost) after 2 characters"


def test_every_5xx_but_501_is_transient() -> None:
    assert classify(ServerError(507)).category is Category.TRANSIENT
    assert classify(ServerError(501)).category is Category.PERMANENT
    assert not classify(ServerError(501)).retryable


def test_retry_after_header_in_a_plain_dict_whatever_its_case() -> None:
    class Failed(Exception):
        response = SimpleNamespace(status_code=429, headers={"Retry-After": "3"})

    assert classify(Failed()).retry_after == 3.0


def test_classification_is_cached_per_type_but_not_per_message() -> None:
    # The per-type cache must not freeze a message-dependent answer.
    assert classify(RuntimeError("CUDA out of memory")).category is Category.RESOURCE
    assert classify(RuntimeError("something else")).category is Category.UNKNOWN


_REQUEST = httpx2.Request("POST", "http://127.0.0.1:9/v1/completions")


@pytest.mark.parametrize(
    ("error", "rule", "category"),
    [
        (openai.APITimeoutError(request=_REQUEST), "client-timeout", "timeout"),
        (openai.APIConnectionError(request=_REQUEST), "client-connection", "connection"),
        (requests.exceptions.ReadTimeout("slow"), "client-timeout", "timeout"),
        (requests.exceptions.ConnectionError("refused"), "client-connection", "connection"),
        (aiohttp.ClientConnectionError("reset"), "client-connection", "connection"),
        (httpx2.ConnectError("refused"), "client-connection", "connection"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_the_clients_apps_use_are_classified_by_what_went_wrong(
    error: BaseException, rule: str, category: str
) -> None:
    # an app's own retries see these, not our errors: "unknown" would hide a connection loss
    found = classify(error)
    assert (found.rule, found.category.value) == (rule, category)
    assert found.retryable
