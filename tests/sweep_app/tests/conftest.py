from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from chat import Assistant

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pytest_resilience.plugin.fixtures import TestClock


@pytest.fixture
def assistant(tiny_model: Path, clock: TestClock) -> Iterator[Assistant]:
    """The assistant on the built-in tiny model, in virtual time; ``CHAT_FIXED=1`` builds
    it with its three bugs mended."""
    assistant = Assistant(tiny_model, clock=clock, fixed=os.environ.get("CHAT_FIXED") == "1")
    yield assistant
    assistant.close()
