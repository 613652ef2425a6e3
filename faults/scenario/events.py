"""The journal events of a scenario run: :class:`ScenarioStep` when a step (or a phase)
begins and :class:`ScenarioOp` when a model op or call ends, so that the journal's timeline
reads as one story next to the faults and the reactions. The core's event registry finds
them by the names the package exports (``faults.scenario:ScenarioOp``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pytest_resilience.core.events import Event


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioStep(Event):
    """A step began (``index`` from 1), or a phase: ``steady_state``, ``rollback``."""

    kind: ClassVar[str] = "scenario.step"
    index: int
    op: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioOp(Event):
    """A model op ended: ``outcome`` is ``ok``, ``partial`` or ``failed``."""

    kind: ClassVar[str] = "scenario.op"
    op: str
    outcome: str
    detail: str = ""
