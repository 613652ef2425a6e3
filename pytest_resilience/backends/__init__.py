"""Model backends: llama-cpp-python in process, and a model daemon over HTTP.

Import the concrete modules (``backends.llama``, ``backends.daemon``, ``backends.tiny``,
``backends.resilient``) directly; llama_cpp and httpx are imported lazily inside them, so
importing this package costs nothing.
"""

from __future__ import annotations

from .base import AsyncBackend, Backend, GenerationParams, TextStream

__all__ = ["AsyncBackend", "Backend", "GenerationParams", "TextStream"]
