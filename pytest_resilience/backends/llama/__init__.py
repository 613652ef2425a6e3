"""The in-process backend: llama-cpp-python, cancellable between tokens.
:class:`LlamaBackend` (:mod:`.backend`) loads the model and serialises its calls,
:class:`LlamaStream` (:mod:`.stream`) is one streamed generation and carries the
cancellation, and :mod:`.checks` maps llama-cpp-python's failures to the core's errors
(:func:`map_llama_error`) and validates what it returns (:class:`EmbeddingCheck`).
``llama_cpp`` is imported when a backend is built, never when this package is imported.
"""

from __future__ import annotations

from .backend import LlamaBackend
from .checks import EmbeddingCheck, map_llama_error
from .stream import LlamaStream

__all__ = ["EmbeddingCheck", "LlamaBackend", "LlamaStream", "map_llama_error"]
