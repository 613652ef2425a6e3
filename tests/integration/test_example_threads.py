"""The example project's model runs on one llama.cpp thread, for its prompts too.

llama-cpp-python gives a prompt (a batch of tokens) as many threads as the machine has
cores unless ``n_threads_batch`` says otherwise, and llama.cpp's threads spin while they
wait for each other: on a busy machine a call of the tiny model then costs tens of times its
CPU time, and a fault sweep of the example (docs/sweep.md) becomes several times slower than
its plain run, depending on which cells happen to meet the load.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp

if TYPE_CHECKING:
    from types import ModuleType

SERVICE = Path(__file__).parents[2] / "docs" / "example" / "tales" / "service.py"


def _service() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_tales_service", SERVICE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_storyteller_model_uses_one_thread_for_tokens_and_prompts(tiny_model: Path) -> None:
    teller = _service().Storyteller(tiny_model)
    try:
        ctx = teller.llm.ctx  # what llama.cpp itself was given, not the Python defaults
        assert llama_cpp.llama_n_threads(ctx) == 1
        assert llama_cpp.llama_n_threads_batch(ctx) == 1
        assert teller.tell("Once upon a time")  # and the model still answers
    finally:
        teller.close()
