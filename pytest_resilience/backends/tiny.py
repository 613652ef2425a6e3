"""A tiny, deterministic llama-architecture model, written on demand: the test model.

``tiny_model_path()`` writes (once per parameter set) a GGUF file of about half a megabyte
with random weights from a fixed seed, and returns its path. llama.cpp loads it in
milliseconds and generates thousands of tokens per second, so tests exercise the real
llama-cpp-python code paths (tokenizer, sampling, streaming, embeddings, chat) without a
download. The text it writes is nonsense, but the same nonsense every time: greedy decoding
and seeded sampling give identical output across processes.

Design points:

- A SentencePiece-style ("llama") vocabulary: ``<unk>``, ``<s>``, ``</s>``, the 256 byte
  tokens ``<0x00>``..``<0xFF>`` (so any text tokenises), the printable ASCII characters with
  ``▁`` for the space, and a few merges (``▁the``, ``ing``, ...).
- The output rows of control and byte tokens are zero and every printable row carries a
  positive bias (through a residual dimension held constant across the layers), so the
  printable logits beat the zero ones: generation emits printable text only, never ``</s>``,
  and always runs to ``max_tokens`` or a stop string.
- The file is named by a hash of its parameters and written atomically (a temporary file in
  the same folder, fsync, ``os.replace``), so parallel workers never see half a file.

``gguf`` and ``numpy`` are imported lazily: importing this module costs nothing. Load it
with ``n_threads=1``: a model this small gains nothing from threads, and on a busy machine
llama.cpp's spinning thread pool can make it many times slower. ``LlamaBackend`` applies it
to prompts too; ``llama_cpp.Llama`` needs ``n_threads_batch=1`` as well, or its prompts get
every core.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["CACHE_ENV", "TinyModelSpec", "default_cache_dir", "tiny_model_path"]

#: Environment variable naming the cache root; models go into its ``models`` folder.
CACHE_ENV = "PYTEST_RESILIENCE_CACHE"

# Bump when the writer below changes what it writes: the file name changes with it.
_FORMAT = 1

_CONTROL = ("<unk>", "<s>", "</s>")
_SPACE = "\u2581"  # SentencePiece's visible space
# Each merge is the concatenation of two earlier tokens, as SentencePiece's bigram merging needs.
_MERGES = (
    "▁t", "he", "▁the", "in", "ing", "er", "an", "nd", "▁a", "▁and",
    "on", "re", "▁o", "▁of", "▁s", "en", "st", "▁w", "at", "ou",
)  # fmt: skip
_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass(frozen=True, slots=True)
class TinyModelSpec:
    """The parameters of a tiny model; the file name is a hash of them."""

    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_ff: int = 128
    context_length: int = 2048
    seed: int = 20240607

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head or self.n_embd < 8 or self.n_layer < 1 or self.n_ff < 1:
            raise ValueError(f"invalid tiny model parameters: {self}")

    @property
    def key(self) -> str:
        """A short hash of the parameters and the writer's format version."""
        text = json.dumps({"format": _FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def filename(self) -> str:
        return f"tiny-llama-{self.key}.gguf"


def default_cache_dir() -> Path:
    """Where models are cached: ``$PYTEST_RESILIENCE_CACHE/models``, else
    ``$XDG_CACHE_HOME/pytest-resilience/models``, else ``~/.cache/pytest-resilience/models``.
    """
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pytest-resilience" / "models"


def tiny_model_path(cache_dir: Path | None = None, spec: TinyModelSpec | None = None) -> Path:
    """The path of the tiny model for ``spec``, writing it into ``cache_dir`` if missing.

    Safe to call from many processes at once: each writes its own temporary file and
    renames it into place, so a reader sees either no file or a complete one. Never
    downloads anything. Raises ``OSError`` if the folder cannot be created or written.
    """
    spec = spec or TinyModelSpec()
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    path = folder / spec.filename
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, spec)
    return path


def _write_atomically(path: Path, spec: TinyModelSpec) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _write_gguf(tmp, spec)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; not every platform can open a directory, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the SentencePiece-style vocabulary."""
    from gguf import TokenType  # noqa: PLC0415 - optional dependency, imported on use

    tokens = list(_CONTROL)
    types = [int(TokenType.UNKNOWN), int(TokenType.CONTROL), int(TokenType.CONTROL)]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(TokenType.BYTE)] * 256
    pieces = [_SPACE, *(chr(c) for c in range(0x21, 0x7F))]
    for merge in _MERGES:
        if not any(merge[:i] in pieces and merge[i:] in pieces for i in range(1, len(merge))):
            raise AssertionError(f"merge {merge!r} is not two earlier tokens")  # a bug here
        pieces.append(merge)
    tokens += pieces
    types += [int(TokenType.NORMAL)] * len(pieces)
    # Higher score merges first; later (longer) merges rank lower, as in a trained model.
    scores = [0.0] * (len(tokens) - len(pieces)) + [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


def _weights(spec: TinyModelSpec, n_vocab: int, n_fixed: int) -> dict[str, npt.NDArray[np.float32]]:
    """Random weights; numpy shapes are (out, in), the reverse of ggml's."""
    import numpy as np  # noqa: PLC0415 - optional dependency, imported on use

    rng = np.random.default_rng(spec.seed)
    d, ff = spec.n_embd, spec.n_ff

    def mat(rows: int, cols: int) -> npt.NDArray[np.float32]:
        return (rng.standard_normal((rows, cols)) / math.sqrt(cols)).astype(np.float32)

    ones = np.ones(d, dtype=np.float32)
    embd = rng.standard_normal((n_vocab, d)).astype(np.float32)
    # Dimension 0 of the residual stream is a constant that no layer writes to: after the
    # final norm it acts as a bias input, which the output rows turn into a printable bias.
    embd[:, 0] = 4.0
    weights = {"token_embd.weight": embd}
    for i in range(spec.n_layer):
        wo, down = mat(d, d), mat(d, ff)
        wo[0, :] = 0.0
        down[0, :] = 0.0
        weights |= {
            f"blk.{i}.attn_norm.weight": ones,
            f"blk.{i}.attn_q.weight": mat(d, d),
            f"blk.{i}.attn_k.weight": mat(d, d),
            f"blk.{i}.attn_v.weight": mat(d, d),
            f"blk.{i}.attn_output.weight": wo,
            f"blk.{i}.ffn_norm.weight": ones,
            f"blk.{i}.ffn_gate.weight": mat(ff, d),
            f"blk.{i}.ffn_up.weight": mat(ff, d),
            f"blk.{i}.ffn_down.weight": down,
        }
    out = (rng.standard_normal((n_vocab, d)) * 2.0).astype(np.float32)
    out[:, 0] = 1.0
    out[:n_fixed, :] = 0.0  # control and byte tokens: logit 0, below every printable one
    weights["output_norm.weight"] = ones
    weights["output.weight"] = out
    return weights


def _write_gguf(path: Path, spec: TinyModelSpec) -> None:
    import gguf  # noqa: PLC0415 - optional dependency, imported on use

    tokens, scores, types = _vocabulary()
    n_fixed = len(_CONTROL) + 256
    w = gguf.GGUFWriter(None, "llama")
    w.add_name("pytest-resilience tiny")
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_context_length(spec.context_length)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head)
    w.add_rope_dimension_count(spec.n_embd // spec.n_head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(_CHAT_TEMPLATE)
    for name, tensor in _weights(spec, len(tokens), n_fixed).items():
        w.add_tensor(name, tensor)
    try:
        w.write_header_to_file(path)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
