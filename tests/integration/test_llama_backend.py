"""LlamaBackend over the real tiny model: generation, streams, chat, embeddings, cancellation,
cleanup and error mapping. No mocks: llama-cpp-python runs for real.
"""

from __future__ import annotations

import gc
import inspect
import math
import subprocess
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

import pytest

from pytest_resilience.backends.base import Backend, GenerationParams, TextStream
from pytest_resilience.backends.llama import EmbeddingCheck, LlamaBackend, map_llama_error
from pytest_resilience.core.cancel import cancel_scope, deadline
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import (
    BackendError,
    Cancelled,
    DeadlineExceeded,
    InvalidOutput,
    ModelNotFound,
    ResourceExhausted,
    StreamInterrupted,
)

if TYPE_CHECKING:
    from pathlib import Path

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

PARAMS = GenerationParams(max_tokens=48)


class TickingClock(VirtualClock):
    """Every reading moves time on by one second, so a deadline of n seconds ends after about
    n readings: the stopping criterion reads the clock once per token.
    """

    def now(self) -> float:
        self.advance(1.0)
        return super().now()


@pytest.fixture(scope="module")
def raw_llama(tiny_model_path: Path) -> Any:
    llm = llama_cpp.Llama(
        str(tiny_model_path), n_ctx=1024, seed=0, n_threads=1, n_threads_batch=1, verbose=False
    )
    yield llm
    llm.close()


def _raw_text(llm: Any, prompt: str, params: GenerationParams) -> str:
    out = llm.create_completion(
        prompt,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        seed=params.seed,
        repeat_penalty=params.repeat_penalty,
        stop=list(params.stop),
    )
    return str(out["choices"][0]["text"])


# --------------------------------------------------------------------------- generation


def test_speaks_the_backend_protocol(
    llama_backend: LlamaBackend, raw_llama: Any, tiny_model_path: Path
) -> None:
    # isinstance() on a runtime Protocol only sees the names: what follows is what they do
    assert isinstance(llama_backend, Backend)
    assert llama_backend.name == "tiny"  # the name it was given, a str

    # generate(): the model's whole completion as a str, default parameters when None
    text = llama_backend.generate("Hi", PARAMS)
    assert type(text) is str
    assert text
    assert text == _raw_text(raw_llama, "Hi", PARAMS)
    default = GenerationParams()
    assert llama_backend.generate("Hi") == _raw_text(raw_llama, "Hi", default)

    # stream(): an iterator of str chunks (itself) that add up to the same completion
    stream = llama_backend.stream("Hi", PARAMS)
    try:
        assert isinstance(stream, TextStream)
        assert iter(stream) is stream
        chunks = [next(stream)]
        chunks += list(stream)
    finally:
        stream.close()
    assert all(type(c) is str and c for c in chunks)
    assert "".join(chunks) == text
    # ... and close() ends it early: nothing more comes
    stream = llama_backend.stream("Hi", PARAMS)
    first = next(stream)
    stream.close()
    assert type(first) is str
    assert first == chunks[0]
    assert next(stream, None) is None

    # embed(): a sequence of finite floats, as wide as the model
    vector = llama_backend.embed("Hi")
    assert len(vector) == raw_llama.n_embd() == 64
    assert all(type(v) is float and math.isfinite(v) for v in vector)

    # close(): the model is released, and the backend refuses work after it
    backend = LlamaBackend(tiny_model_path, n_ctx=256, n_threads=1)
    assert isinstance(backend, Backend)
    backend.close()
    assert backend.closed
    with pytest.raises(BackendError, match="closed"):
        backend.generate("Hi", PARAMS)


def test_generate_matches_llama_cpp_with_the_same_parameters(
    llama_backend: LlamaBackend, raw_llama: Any
) -> None:
    text = llama_backend.generate("Once upon a time", PARAMS)
    assert text
    assert text == _raw_text(raw_llama, "Once upon a time", PARAMS)
    assert llama_backend.generate("Once upon a time", PARAMS) == text  # deterministic


def test_repeat_penalty_is_passed_explicitly(llama_backend: LlamaBackend, raw_llama: Any) -> None:
    plain = llama_backend.generate("Hello", PARAMS)
    params = PARAMS.with_(repeat_penalty=1.5)
    penalised = llama_backend.generate("Hello", params)
    assert penalised != plain
    assert penalised == _raw_text(raw_llama, "Hello", params)


def test_seeded_sampling_is_reproducible(llama_backend: LlamaBackend) -> None:
    hot = PARAMS.with_(temperature=0.9, seed=11)
    first = llama_backend.generate("Hello", hot)
    assert llama_backend.generate("Hello", hot) == first
    assert llama_backend.generate("Hello", hot.with_(seed=12)) != first


def test_stop_strings_end_the_completion(llama_backend: LlamaBackend) -> None:
    full = llama_backend.generate("Hello", PARAMS)
    stop = full[12:14]
    stopped = llama_backend.generate("Hello", PARAMS.with_(stop=(stop,)))
    assert stopped == full[: full.index(stop)]


def test_stream_yields_the_same_text_as_generate(llama_backend: LlamaBackend) -> None:
    expected = llama_backend.generate("Tell me a story", PARAMS)
    with llama_backend.stream("Tell me a story", PARAMS) as stream:
        chunks = list(stream)
    assert len(chunks) > 10  # about one chunk per token
    assert all(chunks)
    assert "".join(chunks) == expected == stream.text
    assert stream.finish_reason == "length"


def test_chat_uses_the_template_in_the_model(llama_backend: LlamaBackend, raw_llama: Any) -> None:
    messages = [{"role": "user", "content": "Hi there"}]
    reply = llama_backend.chat(messages, PARAMS)
    raw = raw_llama.create_chat_completion(
        messages, max_tokens=PARAMS.max_tokens, temperature=0.0, seed=0, repeat_penalty=1.0
    )
    assert reply
    assert reply == raw["choices"][0]["message"]["content"]
    assert llama_backend.chat(messages, PARAMS) == reply


# ------------------------------------------------------------------------- cancellation


def test_cancel_mid_stream_stops_within_one_token(llama_backend: LlamaBackend) -> None:
    llm = llama_backend.llama
    with cancel_scope() as scope:
        stream = llama_backend.stream("Hello", GenerationParams(max_tokens=400))
        received = [next(stream) for _ in range(5)]
        before = llm.n_tokens
        scope.cancel("user pressed stop")
        with pytest.raises(Cancelled, match="user pressed stop"):
            next(stream)
        assert llm.n_tokens - before <= 1
        assert stream.text == "".join(received)  # nothing was delivered after cancel()
        assert list(stream) == []  # and the stream is finished


def test_cancelled_generate_raises_instead_of_returning_partial_text(
    llama_backend: LlamaBackend,
) -> None:
    llm = llama_backend.llama
    with pytest.raises(DeadlineExceeded), deadline(20, clock=TickingClock()):
        llama_backend.generate("Hello", GenerationParams(max_tokens=400))
    generated = llm.n_tokens - len(llm.tokenize(b"Hello"))
    assert 0 < generated <= 20  # stopped by the deadline long before max_tokens


def test_generate_under_a_cancelled_scope_never_starts(llama_backend: LlamaBackend) -> None:
    llama_backend.generate("warm", GenerationParams(max_tokens=3))
    before = llama_backend.llama.n_tokens
    with cancel_scope() as scope:
        scope.cancel()
        with pytest.raises(Cancelled):
            llama_backend.generate("Hello", PARAMS)
    assert llama_backend.llama.n_tokens == before


def test_chat_stops_when_its_deadline_passes(llama_backend: LlamaBackend) -> None:
    with pytest.raises(DeadlineExceeded), deadline(15, clock=TickingClock()):
        llama_backend.chat([{"role": "user", "content": "Hi"}], GenerationParams(max_tokens=400))
    assert llama_backend.generate("Hi", PARAMS)  # the backend is usable afterwards


def test_cancel_from_another_thread_stops_a_running_generate(
    llama_backend: LlamaBackend,
) -> None:
    started = threading.Event()

    class SignallingClock(VirtualClock):
        # read once per token by the stopping criterion: tells us generation is under way
        readings = 0

        def now(self) -> float:
            self.readings += 1
            if self.readings == 10:
                started.set()
            return super().now()

    outcome: list[BaseException] = []
    scope = deadline(1e9, clock=SignallingClock())

    def work() -> None:
        try:
            with scope:
                llama_backend.generate("Hello", GenerationParams(max_tokens=900))
        except Cancelled as exc:
            outcome.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    assert started.wait(30)
    scope.cancel("shutdown")
    at_cancel = llama_backend.llama.n_tokens
    worker.join(30)
    assert not worker.is_alive()
    assert len(outcome) == 1
    assert llama_backend.llama.n_tokens - at_cancel <= 1
    assert llama_backend.llama.n_tokens < 900


# ------------------------------------------------------------------------ stream cleanup


def test_closing_a_stream_closes_the_llama_generator(llama_backend: LlamaBackend) -> None:
    stream = llama_backend.stream("Hello", GenerationParams(max_tokens=400))
    inner = stream._chunks
    assert inner is not None
    next(stream)
    before = llama_backend.llama.n_tokens
    stream.close()
    assert inspect.getgeneratorstate(inner) == inspect.GEN_CLOSED  # type: ignore[arg-type]
    assert llama_backend.llama.n_tokens == before
    assert list(stream) == []
    stream.close()  # idempotent


def test_an_abandoned_stream_stops_and_the_backend_recovers(llama_backend: LlamaBackend) -> None:
    expected = llama_backend.generate("Hello", PARAMS)
    stream = llama_backend.stream("Something else", GenerationParams(max_tokens=400))
    next(stream)
    inner = weakref.ref(stream._chunks)
    del stream
    gc.collect()
    assert inner() is None  # the generator was finalised, which closes it
    assert llama_backend.generate("Hello", PARAMS) == expected


def test_close_from_another_thread_ends_the_consumer(llama_backend: LlamaBackend) -> None:
    stream = llama_backend.stream("Hello", GenerationParams(max_tokens=900))
    first = threading.Event()
    received: list[str] = []

    def consume() -> None:
        for chunk in stream:
            received.append(chunk)
            first.set()

    worker = threading.Thread(target=consume)
    worker.start()
    assert first.wait(30)
    stream.close()
    worker.join(30)
    assert not worker.is_alive()
    assert 0 < len(received) < 900


def test_a_new_generation_supersedes_an_open_stream(llama_backend: LlamaBackend) -> None:
    stream = llama_backend.stream("Hello", GenerationParams(max_tokens=400))
    partial = next(stream) + next(stream)
    assert llama_backend.generate("x", GenerationParams(max_tokens=3))
    with pytest.raises(StreamInterrupted) as info:
        next(stream)
    assert info.value.partial == partial


def test_closing_the_backend_interrupts_its_stream_and_refuses_work(
    tiny_model_path: Path,
) -> None:
    backend = LlamaBackend(tiny_model_path, n_ctx=256, n_threads=1)
    stream = backend.stream("Hello", GenerationParams(max_tokens=100))
    next(stream)
    backend.close()
    backend.close()
    with pytest.raises(StreamInterrupted):
        next(stream)
    with pytest.raises(BackendError, match="closed"):
        backend.generate("Hello")


# --------------------------------------------------------------------------- embeddings


def test_embeddings_are_mean_pooled_finite_and_deterministic(
    llama_backend: LlamaBackend,
) -> None:
    vector = llama_backend.embed("hello world")
    assert len(vector) == 64
    assert all(math.isfinite(v) for v in vector)
    assert llama_backend.embed("hello world") == vector
    assert llama_backend.embed("goodbye") != vector
    assert llama_backend.generate("Hello", PARAMS)  # generation still works alongside


def test_normalised_embeddings_have_unit_length(tiny_model_path: Path) -> None:
    with LlamaBackend(
        tiny_model_path,
        n_ctx=256,
        n_threads=1,
        embedding=True,
        embedding_check=EmbeddingCheck(normalize=True),
    ) as backend:
        vector = backend.embed("hello")
    assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-9)


def test_an_embedding_of_the_wrong_dimension_is_invalid_output(tiny_model_path: Path) -> None:
    with (
        LlamaBackend(
            tiny_model_path, n_ctx=256, n_threads=1, embedding_check=EmbeddingCheck(dim=32)
        ) as b,
        pytest.raises(InvalidOutput, match="64 dimensions, expected 32"),
    ):
        b.embed("hello")


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (None, "embedding is None"),
        ("0.1 0.2", "not a vector"),
        ([[0.1, 0.2], [0.3, 0.4]], "not a flat vector of numbers"),
        ([], "empty"),
        ([0.1, 0.2], "2 dimensions, expected 3"),
        ([0.1, math.nan, 0.3], "nan at index 1"),
        ([0.1, 0.2, -math.inf], "-inf at index 2"),
    ],
)
def test_embedding_check_names_the_defect(vector: object, message: str) -> None:
    with pytest.raises(InvalidOutput, match=message):
        EmbeddingCheck()(vector, dim=3 if message.startswith("2 dim") else None)


def test_embedding_check_normalises_and_refuses_zero_vectors() -> None:
    check = EmbeddingCheck(dim=2, normalize=True)
    assert check([3, 4]) == [0.6, 0.8]
    with pytest.raises(InvalidOutput, match="all zeros"):
        check([0.0, 0.0])


# ------------------------------------------------------------------------ errors, leaks


def test_a_missing_model_is_model_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelNotFound) as info:
        LlamaBackend(missing)
    assert info.value.path == str(missing)
    with pytest.raises(ModelNotFound, match="not a file"):
        LlamaBackend(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_model_is_model_not_found(
    tmp_path: Path, tiny_model_path: Path, damage: str
) -> None:
    bad = tmp_path / "bad.gguf"
    data = tiny_model_path.read_bytes()
    bad.write_bytes(b"not a gguf file" * 100 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ModelNotFound) as info:
        LlamaBackend(bad)
    assert info.value.path == str(bad)
    assert isinstance(info.value.__cause__, ValueError)
    assert "failed to load model" in str(info.value.__cause__).lower()


_OOM = """
import resource, sys
from pytest_resilience.backends.llama import LlamaBackend
from pytest_resilience.core.errors import ResourceExhausted
import llama_cpp
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, resource.RLIM_INFINITY))
try:
    LlamaBackend(sys.argv[1], n_ctx=1 << 24)  # an 8 GB KV cache in a 2 GB address space
except ResourceExhausted as exc:
    print("ResourceExhausted", type(exc.__cause__).__name__, exc)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_AS")
def test_a_context_that_cannot_be_allocated_is_resource_exhausted(tiny_model_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _OOM, str(tiny_model_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ResourceExhausted ValueError Failed to create llama_context")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ValueError("Failed to create llama_context"), ResourceExhausted),
        (MemoryError(), ResourceExhausted),
        (RuntimeError("llama_decode returned 1"), ResourceExhausted),
        (RuntimeError("llama_decode returned -3"), BackendError),
        (ValueError("Model path does not exist: x.gguf"), ModelNotFound),
        (ValueError("Requested tokens (900) exceed context window of 512"), type(None)),
        (KeyError("x"), type(None)),
    ],
)
def test_llama_errors_map_to_the_core_errors(exc: BaseException, expected: type) -> None:
    mapped = map_llama_error(exc, "x.gguf")
    assert type(mapped) is expected


def test_loading_many_times_leaks_no_descriptors_or_threads(tiny_model_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()

    def cycle() -> None:
        with LlamaBackend(tiny_model_path, n_ctx=128, n_threads=1) as backend:
            stream = backend.stream("Hello", GenerationParams(max_tokens=20))
            next(stream)  # left open: close() must clean it up
            backend.embed("hello")

    cycle()  # warm up: llama.cpp creates its backend state once per process
    gc.collect()
    fds, threads = process.num_fds(), process.num_threads()
    for _ in range(8):
        cycle()
    gc.collect()
    assert (process.num_fds(), process.num_threads()) == (fds, threads)
