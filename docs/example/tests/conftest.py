from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from tales import Storyteller

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pytest_resilience import Journal
    from pytest_resilience.plugin.fixtures import TestClock


@pytest.fixture
def teller(tiny_model: Path, clock: TestClock, journal: Journal) -> Iterator[Storyteller]:
    """The storyteller on the built-in tiny model, in virtual time, writing to the journal."""
    teller = Storyteller(tiny_model, clock=clock, journal=journal)
    yield teller
    teller.close()
