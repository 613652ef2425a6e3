"""What a run found: :class:`Outcome` (passed or not, the failures, the journal, the
summary), the :class:`Stats` of its ops and durations, and one :class:`Check` for each
expectation of the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_resilience.core.analytics import Summary
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from faults.scenario.model import Scenario


@dataclass(slots=True)
class Stats:
    """Counts and durations of one run: model ops by op name ``(ok, failed)``, wall-clock
    seconds, and seconds on the scenario's clock (virtual under a virtual clock)."""

    ops: dict[str, list[int]] = field(default_factory=dict)
    wall: float = 0.0
    elapsed: float = 0.0

    @property
    def total(self) -> int:
        return sum(ok + failed for ok, failed in self.ops.values())

    @property
    def ok(self) -> int:
        return sum(ok for ok, _ in self.ops.values())

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.total if self.total else None

    def count(self, op: str, ok: bool) -> None:
        counts = self.ops.setdefault(op, [0, 0])
        counts[0 if ok else 1] += 1


@dataclass(frozen=True, slots=True)
class Check:
    """One expectation: what was expected, what happened, and whether it held."""

    key: str
    expected: Any
    actual: Any
    held: bool
    label: str = ""  # where a check outside [expect] was made: "status after step 3 (line 40)"
    why: str = ""  # what explains the actual value (a status's reasons)

    def __str__(self) -> str:
        where = self.label or f"expect.{self.key}"
        why = f" ({self.why})" if self.why else ""
        return f"{where} = {self.expected!r}: got {self.actual!r}{why}"


@dataclass(slots=True)
class Outcome:
    """What :func:`run` found: ``passed``, the ``failures`` (readable lines), the
    ``journal`` of the run, ``stats``, each expectation's ``checks``, the journal's
    ``summary`` over the steps, the ``seed`` used, and ``error`` when a step raised.
    ``statuses``: the resilient client's status where the file asked for it, in order, as
    ``(where, status)``: ``("before", "healthy")``, ``("step 4", "degraded")``."""

    scenario: Scenario
    seed: int
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    journal: Journal = field(default_factory=Journal)
    stats: Stats = field(default_factory=Stats)
    checks: list[Check] = field(default_factory=list)
    summary: Summary = field(default_factory=Summary)
    error: str | None = None
    statuses: list[tuple[str, str]] = field(default_factory=list)
