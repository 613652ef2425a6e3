"""The ``*.toml`` files here are malformed on purpose (``tests/corpus/make_scenarios.py``):
``pytest tests/corpus/scenarios`` runs their test, and does not collect them as scenarios
(a folder named ``scenarios`` on the command line would)."""

from __future__ import annotations

collect_ignore_glob = ["*.toml"]
