"""The llama.* sites against the real tiny model: every kind at every site that admits it,
met both by LlamaBackend and by code that calls ``llama_cpp.Llama`` directly.

Hangs and latency run on a VirtualClock: no test here waits in real time.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest

import faults
from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.llama import LlamaBackend
from pytest_resilience.core.cancel import deadline
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import (
    DeadlineExceeded,
    HangDetected,
    InvalidOutput,
    ModelNotFound,
    ResourceExhausted,
    StreamStalled,
)
from pytest_resilience.core.events import FaultInjected
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.stream import StreamGuard

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

PARAMS = GenerationParams(max_tokens=24)
PROMPT = "Once upon a time"
CHAT = [{"role": "user", "content": "Hello"}]
PATCHED = ("__init__", "create_completion", "__call__", "create_chat_completion", "embed")
ORIGINALS = {name: vars(llama_cpp.Llama)[name] for name in (*PATCHED, "create_embedding")}


def _assert_restored() -> None:
    for name, original in ORIGINALS.items():
        assert vars(llama_cpp.Llama)[name] is original, name


@pytest.fixture(scope="module")
def backend(tiny_model_path: Path) -> Iterator[LlamaBackend]:
    with LlamaBackend(tiny_model_path, n_ctx=1024, n_threads=1, embedding=True) as b:
        yield b


@pytest.fixture(scope="module")
def raw(tiny_model_path: Path) -> Iterator[Any]:
    llm = llama_cpp.Llama(
        str(tiny_model_path), n_ctx=1024, seed=0, n_threads=1, n_threads_batch=1, verbose=False
    )
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def baseline(backend: LlamaBackend) -> dict[str, Any]:
    """What the model answers with no fault, to compare against."""
    return {
        "text": backend.generate(PROMPT, PARAMS),
        "chunks": list(backend.stream(PROMPT, PARAMS)),
        "chat": backend.chat(CHAT, PARAMS),
        "vector": backend.embed("hello"),
    }


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


def _raw_completion(raw: Any, **kw: Any) -> Any:
    return raw.create_completion(PROMPT, max_tokens=24, temperature=0.0, seed=0, **kw)


# ------------------------------------------------------------------------- generate


def test_generate_none_reaches_the_backend_and_raw_calls_counted_once(
    backend: LlamaBackend, raw: Any, baseline: dict[str, Any]
) -> None:
    journal = Journal()
    with faults.inject("llama.generate=3*none", journal=journal) as run:
        with pytest.raises(InvalidOutput, match="returned None"):
            backend.generate(PROMPT, PARAMS)
        assert _raw_completion(raw) is None
        assert raw(PROMPT, max_tokens=4) is None  # __call__ delegates: still one call
        assert backend.generate(PROMPT, PARAMS) == baseline["text"]
    assert run.calls("llama.generate") == 4
    assert [e.call for e in journal.events(FaultInjected)] == [1, 2, 3]
    _assert_restored()


def test_generate_raise_oom_corrupt(backend: LlamaBackend, raw: Any) -> None:
    spec = "llama.generate=@1raise(ConnectionError)->@2oom->@3oom->corrupt"
    with faults.inject(spec):
        with pytest.raises(ConnectionError, match=r"fault injected at llama\.generate"):
            backend.generate(PROMPT, PARAMS)
        with pytest.raises(ResourceExhausted, match="llama_decode returned 1"):
            backend.generate(PROMPT, PARAMS)
        with pytest.raises(RuntimeError, match="llama_decode returned 1"):
            _raw_completion(raw)
        assert backend.generate(PROMPT, PARAMS) == ""
        assert _raw_completion(raw)["choices"][0]["text"] == ""


def test_generate_timeout_is_ended_by_a_deadline_in_virtual_time(
    backend: LlamaBackend, raw: Any, vclock: VirtualClock
) -> None:
    started = time.perf_counter()
    with faults.inject("llama.generate=timeout(30s)", clock=vclock):
        with pytest.raises(DeadlineExceeded), deadline(10.0, clock=vclock):
            backend.generate(PROMPT, PARAMS)
        with pytest.raises(DeadlineExceeded), deadline(10.0, clock=vclock):
            _raw_completion(raw)
        with pytest.raises(TimeoutError, match="no answer within 30s"):
            backend.generate(PROMPT, PARAMS)  # no deadline: the whole 30 virtual seconds
    assert vclock.now() == pytest.approx(50.0)
    # generous, for a loaded machine: the injected waits (50 s) served in real time would
    # exceed it; the calls themselves never reach the model
    assert time.perf_counter() - started < 30.0


@pytest.mark.timeout(10)
def test_an_unguarded_generate_hang_is_detected(
    backend: LlamaBackend, vclock: VirtualClock
) -> None:
    with faults.inject("llama.generate=timeout", clock=vclock), pytest.raises(HangDetected) as hung:
        backend.generate(PROMPT, PARAMS)
    assert "llama.generate" in str(hung.value)
    assert "no timeout or deadline guards" in str(hung.value)


def test_generate_latency_delays_the_same_answer(
    backend: LlamaBackend, baseline: dict[str, Any], vclock: VirtualClock
) -> None:
    with faults.inject("llama.generate=latency(3s)", clock=vclock):
        assert backend.generate(PROMPT, PARAMS) == baseline["text"]
    assert vclock.now() == pytest.approx(3.0)


# ----------------------------------------------------------------------------- chat


def test_chat_faults_and_its_inner_completions_are_not_counted(
    backend: LlamaBackend, raw: Any, baseline: dict[str, Any], vclock: VirtualClock
) -> None:
    spec = "llama.chat=@1none->@2corrupt->@3corrupt->@4timeout(1m);llama.generate=none"
    with faults.inject(spec, clock=vclock) as run:
        with pytest.raises(InvalidOutput):
            backend.chat(CHAT, PARAMS)
        reply = backend.chat(CHAT, PARAMS)
        with pytest.raises(json.JSONDecodeError):
            json.loads(reply)
        answer = raw.create_chat_completion(CHAT, max_tokens=8, temperature=0.0, seed=0)
        with pytest.raises(json.JSONDecodeError):
            json.loads(answer["choices"][0]["message"]["content"])
        with pytest.raises(DeadlineExceeded), deadline(5.0, clock=vclock):
            backend.chat(CHAT, PARAMS)
        assert backend.chat(CHAT, PARAMS) == baseline["chat"]
    # the chat handler calls create_completion inside: never a llama.generate call
    assert run.calls("llama.generate") == 0
    assert run.calls("llama.chat") == 5


# --------------------------------------------------------------------------- stream


def test_a_stall_after_n_chunks_is_caught_by_the_guard_with_the_partial_text(
    backend: LlamaBackend, baseline: dict[str, Any], vclock: VirtualClock
) -> None:
    journal = Journal()
    # virtual deadlines longer than the bound below: waited out in real time, they fail it
    guard = StreamGuard(first_token=120.0, idle=60.0, clock=vclock, journal=journal)
    started = time.perf_counter()
    with faults.inject("llama.stream=@1stall(after=3)", clock=vclock, journal=journal):
        with pytest.raises(StreamStalled) as stalled:
            guard.collect(backend.stream(PROMPT, PARAMS))
        again = guard.collect(backend.stream(PROMPT, PARAMS))  # only the first stream stalls
    assert stalled.value.which == "idle"
    assert stalled.value.partial == "".join(baseline["chunks"][:3])
    assert again.text == "".join(baseline["chunks"])
    assert vclock.now() == pytest.approx(60.0)
    # generous, for a loaded machine: two streams of the tiny model take well under a second
    assert time.perf_counter() - started < 30.0
    kinds = [e.kind for e in journal.events()]
    assert kinds.index("fault.injected") < kinds.index("stream.stalled")


def test_truncate_ends_the_stream_cleanly_and_reaches_raw_streams(
    backend: LlamaBackend, raw: Any, baseline: dict[str, Any]
) -> None:
    with faults.inject("llama.stream=truncate(after=4)") as run:
        assert list(backend.stream(PROMPT, PARAMS)) == baseline["chunks"][:4]
        chunks = list(_raw_completion(raw, stream=True))
        assert len(chunks) == 4
        assert list(raw(PROMPT, max_tokens=24, stream=True)) != []
    assert run.calls("llama.stream") == 3


def test_lost_raise_corrupt_and_latency_in_a_stream(
    backend: LlamaBackend, baseline: dict[str, Any], vclock: VirtualClock
) -> None:
    spec = "llama.stream=@1lost(after=2)->@2raise(OSError)->@3corrupt->@4latency(1s)"
    with faults.inject(spec, clock=vclock):
        stream = backend.stream(PROMPT, PARAMS)
        with pytest.raises(ConnectionResetError, match="after 2 chunks"):
            list(stream)
        assert stream.text == "".join(baseline["chunks"][:2])
        with pytest.raises(OSError, match=r"fault injected at llama\.stream"):
            list(backend.stream(PROMPT, PARAMS))
        with pytest.raises(InvalidOutput, match="malformed stream chunk"):
            list(backend.stream(PROMPT, PARAMS))
        assert list(backend.stream(PROMPT, PARAMS)) == baseline["chunks"]
    assert vclock.now() >= len(baseline["chunks"])  # one virtual second per chunk


def test_a_streamed_chat_is_a_stream_too(backend: LlamaBackend, baseline: dict[str, Any]) -> None:
    with faults.inject("llama.stream=truncate(after=2)") as run:
        reply = backend.chat(CHAT, PARAMS)
    assert baseline["chat"].startswith(reply)
    assert len(reply) < len(baseline["chat"])
    assert run.calls("llama.stream") == 1


# ---------------------------------------------------------------------------- embed


def test_embed_nan_corrupt_none_are_caught_by_validation(
    backend: LlamaBackend, raw: Any, baseline: dict[str, Any]
) -> None:
    with faults.inject("llama.embed=@1nan->@2corrupt->@3none->@4raise(ValueError)") as run:
        with pytest.raises(InvalidOutput, match="nan at index 0"):
            backend.embed("hello")
        with pytest.raises(InvalidOutput, match="dimensions, expected"):
            backend.embed("hello")
        with pytest.raises(InvalidOutput, match="embedding is None"):
            backend.embed("hello")
        with pytest.raises(ValueError, match="fault injected"):
            backend.embed("hello")
        assert backend.embed("hello") == baseline["vector"]
    assert run.injected("llama.embed") == 4


def test_raw_embed_and_create_embedding_each_count_once(raw_embedder: Any) -> None:
    with faults.inject("llama.embed=nan") as run:
        vector = raw_embedder.embed("hello")
        answer = raw_embedder.create_embedding("hello")  # calls embed() inside
    assert vector[0] != vector[0]  # NaN
    assert answer["data"][0]["embedding"][-1] == float("inf")
    assert run.calls("llama.embed") == 2


@pytest.fixture(scope="module")
def raw_embedder(tiny_model_path: Path) -> Iterator[Any]:
    llm = llama_cpp.Llama(
        str(tiny_model_path),
        n_ctx=256,
        n_threads=1,
        n_threads_batch=1,
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        verbose=False,
    )
    yield llm
    llm.close()


# ----------------------------------------------------------------------------- load


def test_load_oom_is_llama_cpp_s_context_failure(tiny_model_path: Path) -> None:
    with faults.inject("llama.load=1*oom->1*raise(ModelNotFound)") as run:
        with pytest.raises(ResourceExhausted, match="Failed to create llama_context"):
            LlamaBackend(tiny_model_path, n_threads=1)
        with pytest.raises(ModelNotFound):
            LlamaBackend(tiny_model_path, n_threads=1)
        with LlamaBackend(tiny_model_path, n_threads=1) as fine:
            assert fine.generate("Hi", GenerationParams(max_tokens=2)) is not None
    with (
        faults.inject("llama.load=oom"),
        pytest.raises(ValueError, match="Failed to create llama_context"),
    ):
        llama_cpp.Llama(str(tiny_model_path), verbose=False)
    assert run.calls("llama.load") == 3
    _assert_restored()


def test_a_failing_test_body_restores_llama_cpp(backend: LlamaBackend) -> None:
    spec = "llama.load=oom;llama.generate=none;llama.chat=none;llama.stream=stall;llama.embed=nan"
    with faults.inject(spec):
        assert all(vars(llama_cpp.Llama)[name] is not ORIGINALS[name] for name in PATCHED)
        with pytest.raises(InvalidOutput):
            backend.generate(PROMPT, PARAMS)
    with pytest.raises(InvalidOutput), faults.inject(spec):
        backend.generate(PROMPT, PARAMS)
    _assert_restored()
