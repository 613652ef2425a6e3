"""The ``no-repeat`` and ``stream-closed`` verdicts, on the tiny model under injected faults:
each broken by a naive app and kept by a correct one."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pytest

from faults.verdicts import judge
from pytest_resilience.core.app import retried
from pytest_resilience.core.events import FaultInjected, StreamCancelled
from pytest_resilience.plugin.assertions import assert_resilient

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pytest_resilience.core.journal import Journal

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = "Once upon a time"  # the tiny model answers "}S#b&g the..." (greedy): no repeat
CUT = "llama.stream=1*lost(after=2)"  # the first stream breaks after two chunks
SLOW = "llama.stream=latency(1ms)"  # a fault that cuts nothing


@pytest.fixture
def llm(tiny_model: Path) -> Iterator[Any]:
    model = llama_cpp.Llama(
        str(tiny_model), n_ctx=256, n_threads=1, n_threads_batch=1, seed=0, verbose=False
    )
    yield model
    model.close()


def _chunks(llm: Any) -> Iterator[str]:
    stream = llm.create_completion(PROMPT, stream=True, max_tokens=12, temperature=0)
    for chunk in stream:
        yield chunk["choices"][0]["text"]


def naive_answer(llm: Any) -> str:
    """Shows each chunk as it comes; after a broken stream, asks again from the start."""
    shown: list[str] = []
    for attempt in range(1, 4):
        try:
            shown.extend(_chunks(llm))
            break
        except ConnectionResetError as exc:
            retried("naive_answer", attempt=attempt, delay=0.0, error=exc)
    return "".join(shown)


def careful_answer(llm: Any) -> str:
    """The same, but shows only what goes beyond what it had shown already."""
    shown = ""
    for attempt in range(1, 4):
        text = ""
        try:
            for piece in _chunks(llm):
                text += piece
                if len(text) > len(shown):
                    shown += text[len(shown) :]
            break
        except ConnectionResetError as exc:
            retried("careful_answer", attempt=attempt, delay=0.0, error=exc)
    return shown


class Reader:
    """Reads the first few characters of an answer, and stops."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.stream: Any = None

    def naive_first(self, n: int) -> str:
        self.stream = self.llm.create_completion(PROMPT, stream=True, max_tokens=12)  # opened
        text = ""
        for chunk in self.stream:
            text += chunk["choices"][0]["text"]
            if len(text) >= n:
                break  # and keeps the stream, unclosed
        return text

    def careful_first(self, n: int) -> str:
        text = ""
        with contextlib.closing(
            self.llm.create_completion(PROMPT, stream=True, max_tokens=12)
        ) as stream:
            for chunk in stream:
                text += chunk["choices"][0]["text"]
                if len(text) >= n:
                    break
        return text


def _line(marker: str) -> int:
    with open(__file__, encoding="utf-8") as source:
        for number, text in enumerate(source, 1):
            if text.rstrip().endswith(f"# {marker}"):
                return number
    raise AssertionError(marker)


# ---------------------------------------------------------------------------- no-repeat


def test_a_retry_that_shows_the_delivered_prefix_again_breaks_no_repeat(
    llm: Any, faults: Any, journal: Journal
) -> None:
    faults(CUT)
    answer = naive_answer(llm)
    assert answer.startswith("}S}S")  # the prefix delivered twice
    with pytest.raises(AssertionError) as failure:
        assert_resilient(journal, answer=answer)
    text = str(failure.value)
    assert "the app broke 1 verdict under faults:" in text
    assert "no-repeat (did not deliver again what a broken stream had delivered)" in text
    assert "llama.stream=lost(after=2) (call 1) having delivered '}S'" in text
    assert "'}S}S#b&g" in text
    assert_resilient(journal)  # without the answer, nothing says it repeated itself


def test_a_retry_that_skips_the_delivered_prefix_keeps_no_repeat(
    llm: Any, faults: Any, journal: Journal
) -> None:
    faults(CUT)
    answer = careful_answer(llm)
    assert answer.startswith("}S#b&g")
    assert_resilient(journal, answer=answer)


def test_no_repeat_reads_the_stream_guards_partial_text_too() -> None:
    fault = FaultInjected(time=0.0, source="faults", site="daemon.stream", fault="lost", call=1)
    cut = StreamCancelled(time=1.0, source="guard", reason="ConnectionError: lost", partial="ab")
    closed = StreamCancelled(time=1.0, source="guard", reason="closed", partial="cd")
    [broken] = judge([fault, cut, closed], answers=["xabab", "cdcd"], ignore=["cut-stream"])
    assert broken.verdict == "no-repeat"
    assert "having delivered 'ab'" in broken.evidence
    # nothing broke after a fault
    assert judge([cut, fault], answers=["abab"], ignore=["cut-stream"]) == []


# ------------------------------------------------------------------------ stream-closed


def test_a_stream_left_open_after_the_app_stopped_reading_breaks_stream_closed(
    llm: Any, faults: Any, journal: Journal
) -> None:
    faults(SLOW)
    reader = Reader(llm)
    assert len(reader.naive_first(3)) >= 3
    with pytest.raises(AssertionError) as failure:
        assert_resilient(journal)
    text = str(failure.value)
    assert "stream-closed (closed the llama stream it stopped reading):" in text
    assert f"opened at {__file__}:{_line('opened')} in naive_first" in text
    assert "was neither exhausted nor closed" in text
    reader.stream.close()
    assert_resilient(journal)  # closed now


def test_a_stream_closed_after_the_app_stopped_reading_keeps_stream_closed(
    llm: Any, faults: Any, journal: Journal
) -> None:
    faults(SLOW)
    assert len(Reader(llm).careful_first(3)) >= 3
    assert_resilient(journal)


_OPENED = '    stream = llm.create_completion("Once upon a time", stream=True, max_tokens=12)'
_APP = """
import contextlib

import llama_cpp
import pytest

KEPT = []


@pytest.fixture(scope="module")
def llm(tiny_model):
    model = llama_cpp.Llama(
        str(tiny_model), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False
    )
    yield model
    model.close()


def first_words(llm, careful):
    stream = llm.create_completion("Once upon a time", stream=True, max_tokens=12)
    words = ""
    with contextlib.closing(stream) if careful else contextlib.nullcontext():
        for chunk in stream:
            words += chunk["choices"][0]["text"]
            if len(words) >= 3:
                break
    KEPT.append(stream)  # the app keeps what it read from
    return words


def test_first_words(llm):
    assert first_words(llm, CAREFUL)
"""


@pytest.mark.parametrize("careful", [False, True])
def test_the_plugin_judges_stream_closed_after_the_teardown(
    pytester: pytest.Pytester, careful: bool
) -> None:
    pytester.makepyfile(test_app=_APP.replace("CAREFUL", str(careful)))
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-W",
        "error::faults.VerdictBroken",
        "--inject-faults",
        "llama.stream=latency(1ms)",
    )
    if careful:
        result.assert_outcomes(passed=1)
        return
    result.assert_outcomes(passed=1, errors=1)
    opened = _APP.lstrip("\n").splitlines().index(_OPENED) + 1
    result.stdout.fnmatch_lines(
        [
            "*VerdictBroken: stream-closed: create_completion(stream=True) on the Llama of "
            f"'tiny-llama-*.gguf', * read, opened at *test_app.py:{opened} in first_words, "
            "was neither exhausted nor closed, after llama.stream=latency(1ms) (call 1)*"
        ]
    )
