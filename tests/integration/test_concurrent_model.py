"""The detector of one ``llama_cpp.Llama`` used by two generations at once, on the tiny
model: the plugin turns it on in every test (``resilience_concurrent_model_check``)."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

import pytest

from faults import model_use
from pytest_resilience import (
    Backoff,
    ConcurrentModelUse,
    Fallback,
    Retry,
    RetryError,
    classify,
)
from pytest_resilience.backends.llama import LlamaBackend

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

llama_cpp = pytest.importorskip("llama_cpp")

#: A real-time bound on waiting for the other thread to reach the model: it only guards
#: against a hang of the test itself (the thread is there in milliseconds).
_THREAD_BOUND = 60.0


@pytest.fixture
def llm(tiny_model_path: Path) -> Iterator[Any]:
    model = llama_cpp.Llama(
        str(tiny_model_path), n_ctx=256, n_threads=1, n_threads_batch=1, seed=0, verbose=False
    )
    yield model
    model.close()


def _line(marker: str) -> int:
    """The line of this file that holds ``marker`` in a comment."""
    with open(__file__, encoding="utf-8") as source:
        for number, text in enumerate(source, 1):
            if text.rstrip().endswith(f"# {marker}"):
                return number
    raise AssertionError(marker)


def test_the_plugin_has_installed_it() -> None:
    assert model_use.installed()
    assert model_use.is_on()


def test_a_call_while_a_stream_is_open_names_both_sites(llm: Any) -> None:
    stream = llm.create_completion("Once", stream=True, max_tokens=8)  # first
    next(stream)
    with pytest.raises(ConcurrentModelUse) as caught:
        llm.create_completion("Twice", max_tokens=1)  # second
    error = caught.value
    assert error.how == "open"
    assert error.first.startswith(f"{__file__}:{_line('first')} in test_a_call")
    assert error.second.startswith(f"{__file__}:{_line('second')} in test_a_call")
    text = str(error)
    assert f"test_concurrent_model.py:{_line('first')}" in text
    assert f"test_concurrent_model.py:{_line('second')}" in text
    assert "create_completion(stream=True)" in text
    assert "neither exhausted nor closed" in text
    stream.close()


@pytest.mark.parametrize("second", ["call", "chat", "stream", "embed"])
def test_every_generation_method_is_refused_while_a_chat_stream_is_open(
    llm: Any, second: str
) -> None:
    chat = llm.create_chat_completion([{"role": "user", "content": "hi"}], stream=True)
    next(chat)
    calls = {
        "call": lambda: llm("x", max_tokens=1),
        "chat": lambda: llm.create_chat_completion([{"role": "user", "content": "x"}]),
        "stream": lambda: next(llm.create_completion("x", stream=True, max_tokens=1)),
        "embed": lambda: llm.create_embedding("x"),
    }
    with pytest.raises(ConcurrentModelUse, match="create_chat_completion"):
        calls[second]()
    chat.close()


def test_tokenize_and_detokenize_are_not_generations(llm: Any) -> None:
    stream = llm.create_completion("Once", stream=True, max_tokens=8)
    next(stream)
    tokens = llm.tokenize(b"hello")
    assert llm.detokenize(tokens).strip() == b"hello"
    stream.close()


@pytest.mark.parametrize("release", ["exhausted", "closed", "dropped"])
def test_a_stream_exhausted_closed_or_dropped_releases_the_model(llm: Any, release: str) -> None:
    stream = llm.create_completion("Once", stream=True, max_tokens=4)
    next(stream)
    if release == "exhausted":
        list(stream)
    elif release == "closed":
        stream.close()
    else:
        del stream
    assert llm.create_completion("Once", max_tokens=2)["choices"][0]["text"]


def test_a_stream_only_a_cycle_keeps_is_collected_not_refused(llm: Any) -> None:
    holder: dict[str, Any] = {}
    holder["self"] = holder
    holder["stream"] = llm.create_completion("Once", stream=True, max_tokens=4)
    next(holder["stream"])
    del holder
    assert llm.create_completion("Once", max_tokens=2)["choices"][0]["text"]


def test_two_models_used_at_once_are_fine(llm: Any, tiny_model_path: Path) -> None:
    other = llama_cpp.Llama(
        str(tiny_model_path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False
    )
    try:
        stream = llm.create_completion("Once", stream=True, max_tokens=4)
        next(stream)
        assert other.create_completion("Once", max_tokens=2)["choices"][0]["text"]
        stream.close()
    finally:
        other.close()


def test_two_models_streaming_interleaved(llm: Any, tiny_model_path: Path) -> None:
    other = llama_cpp.Llama(
        str(tiny_model_path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False
    )
    try:
        with (
            contextlib.closing(llm.create_completion("Once", stream=True, max_tokens=4)) as a,
            contextlib.closing(other.create_completion("Once", stream=True, max_tokens=4)) as b,
        ):
            texts = [c["choices"][0]["text"] for pair in zip(a, b, strict=False) for c in pair]
        assert texts
    finally:
        other.close()


def _held_in_a_thread(llm: Any) -> tuple[threading.Thread, threading.Event, list[Any]]:
    """A thread whose completion is held inside the model call (in a stopping criterion,
    between two tokens) until the returned event is set."""
    inside, release = threading.Event(), threading.Event()
    outcome: list[Any] = []

    def hold(input_ids: object, logits: object) -> bool:
        inside.set()
        release.wait(_THREAD_BOUND)
        return False

    def first() -> None:
        criteria = llama_cpp.StoppingCriteriaList([hold])
        answer = llm.create_completion("Once", max_tokens=2, stopping_criteria=criteria)  # held
        outcome.append(answer)

    thread = threading.Thread(target=first, name="holder")
    thread.start()
    assert inside.wait(_THREAD_BOUND), "the first thread never reached the model"
    return thread, release, outcome


def test_a_call_from_a_second_thread_while_the_first_runs(llm: Any) -> None:
    thread, release, outcome = _held_in_a_thread(llm)
    try:
        with pytest.raises(ConcurrentModelUse) as caught:
            llm.create_completion("Twice", max_tokens=1)  # refused
    finally:
        release.set()
        thread.join(_THREAD_BOUND)
    error = caught.value
    assert error.how == "running"
    assert error.first.startswith(f"{__file__}:{_line('held')} in first")
    assert error.second.startswith(f"{__file__}:{_line('refused')} in test_a_call_from")
    assert "still running in thread 'holder'" in str(error)
    assert outcome  # the first one was not disturbed
    assert outcome[0]["choices"][0]["text"]
    assert llm.create_completion("Once", max_tokens=1)["choices"]  # and it let go


def test_the_backends_legitimate_use_does_not_trip_it(tiny_model_path: Path) -> None:
    with LlamaBackend(tiny_model_path, n_ctx=256, n_threads=1, seed=0) as backend:
        stream = backend.stream("Once")
        next(stream)
        assert backend.generate("Twice")  # supersedes (closes) the stream first
        with backend.stream("Once") as again:
            assert "".join(again)
        assert backend.chat([{"role": "user", "content": "hi"}])


def test_it_is_not_an_exception_the_app_may_swallow() -> None:
    error = ConcurrentModelUse("m", first="a:1", second="b:2", how="open")
    assert not isinstance(error, Exception)
    assert not classify(error).retryable


def test_retry_and_fallback_let_it_through(llm: Any) -> None:
    stream = llm.create_completion("Once", stream=True, max_tokens=8)
    next(stream)
    calls: list[str] = []

    def generate(prompt: str) -> str:
        calls.append(prompt)
        return str(llm.create_completion(prompt, max_tokens=1)["choices"][0]["text"])

    retry = Retry(on=Exception, attempts=3, backoff=Backoff(base=0.0))
    with pytest.raises(ConcurrentModelUse):
        retry.call(generate, "retried")
    assert calls == ["retried"]  # one attempt, no retry
    chain = Fallback("answer", [("model", generate), ("canned", lambda p: "canned")], on=Exception)
    with pytest.raises(ConcurrentModelUse):
        chain("fell back")
    assert calls == ["retried", "fell back"]  # the canned step never answered
    stream.close()
    assert retry.call(generate, "after") is not None  # with the stream closed, it works
    with pytest.raises(RetryError):
        Retry(on=Exception, attempts=1).call(lambda: 1 / 0)  # a plain error still fails


def test_the_ini_switch_turns_it_off(pytester: pytest.Pytester, tiny_model_path: Path) -> None:
    pytester.makepyfile(
        f"""
        import llama_cpp

        def test_interleaved():
            llm = llama_cpp.Llama({str(tiny_model_path)!r}, n_ctx=256, n_threads=1,
                                  n_threads_batch=1, verbose=False)
            stream = llm.create_completion("Once", stream=True, max_tokens=4)
            next(stream)
            assert llm.create_completion("Twice", max_tokens=1)["choices"]
            stream.close()
            llm.close()
        """
    )
    off = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", "resilience_concurrent_model_check=false"
    )
    off.assert_outcomes(passed=1)
    on = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    on.assert_outcomes(failed=1)
    on.stdout.fnmatch_lines(
        ["E *ConcurrentModelUse: *.py:6 in test_interleaved is still open*.py:8 in test_inter*"]
    )


def test_a_bad_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nresilience_concurrent_model_check = maybe\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stderr.fnmatch_lines(["*resilience_concurrent_model_check*expected true or false*"])
