"""pytest-resilience: a resilience core for local-LLM applications, and the tools to test it."""

from __future__ import annotations
