"""How a run is shown: :func:`format_report`, a few lines on what was injected, how the code
reacted and what held; :func:`format_failure`, the failures, the journal as a timeline, the
summary and :func:`replay_command`, the command that replays the run with its seed. What the
file or the code under test wrote is shown escaped.
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from faults.scenario.reading import _safe_lines
from pytest_resilience.core.events import FaultInjected, Recovered

if TYPE_CHECKING:
    from faults.scenario.model import Scenario
    from faults.scenario.outcome import Outcome
    from pytest_resilience.core.journal import Journal


def replay_command(scenario: Scenario, seed: int) -> str:
    """The command that replays ``scenario`` with ``seed``:
    ``pytest scenarios/daemon_lost.toml --fault-seed 1234``."""
    path = scenario.path
    with contextlib.suppress(ValueError):
        path = path.resolve().relative_to(Path.cwd())
    return f"pytest {shlex.quote(str(path))} --fault-seed {seed}"


def format_failure(outcome: Outcome) -> str:
    """The failures, the journal as a timeline, the summary and the replay command."""
    scenario = outcome.scenario
    lines = [f"scenario {scenario.path} failed: {scenario.title}", "", "failures:"]
    lines += [f"  - {f}" for f in outcome.failures] or ["  (none)"]
    lines += ["", f"timeline ({scenario.clock} clock, seconds):"]
    timeline = outcome.journal.timeline()
    lines += [f"  {t}" for t in timeline.splitlines()] or ["  (no events)"]
    lines += ["", *str(outcome.summary).splitlines()]
    lines += ["", f"replay: {replay_command(scenario, outcome.seed)}"]
    return _safe_lines("\n".join(lines))


def format_report(outcome: Outcome) -> str:
    """A few lines on one run: what was injected, how the code reacted, whether it held."""
    scenario, summary, stats = outcome.scenario, outcome.summary, outcome.stats
    mark = "PASS" if outcome.passed else "FAIL"
    lines = [
        f"{mark}  {scenario.path.name}: {scenario.title}",
        f"      {stats.wall:.2f}s wall, {stats.elapsed:.3g}s on the {scenario.clock} clock,"
        f" {stats.ok}/{stats.total} {'calls' if scenario.target.callable else 'model ops'}"
        " answered",
    ]
    injected = _injected(outcome.journal)
    lines.append(f"      injected: {injected or 'nothing'}")
    reaction: list[str] = []
    if summary.retries:
        reaction.append(f"{summary.retries} retr{'ies' if summary.retries > 1 else 'y'}")
    reaction += [f"breaker {n}: {', '.join(t)}" for n, t in summary.transitions.items()]
    if summary.rejected:
        reaction.append(f"{summary.rejected} call{'s' if summary.rejected > 1 else ''} rejected")
    for name, steps in summary.fallbacks.items():
        reaction.append(f"fell back ({name}) to {', '.join(dict.fromkeys(steps))} x{len(steps)}")
    reaction += [f"degraded ({n}): {', '.join(t)}" for n, t in summary.degradations.items()]
    kinds = {e.kind for e in outcome.journal.events()}
    if "stream.stalled" in kinds:
        reaction.append("stream stall detected")
    if any(isinstance(e, Recovered) for e in outcome.journal.events()):
        reaction.append(
            "recovered: " + ", ".join(sorted({e.how for e in outcome.journal.events(Recovered)}))
        )
    lines.append(f"      reaction: {'; '.join(reaction) or 'none'}")
    if outcome.statuses:
        lines.append(f"      status: {_statuses(outcome.statuses)}")
    held = ", ".join(c.key for c in outcome.checks if c.held and not c.label)
    lines.append(f"      held: {held or '(no expectations)'}")
    lines += [f"      FAILED: {f}" for f in outcome.failures]
    return _safe_lines("\n".join(lines))


def _statuses(statuses: list[tuple[str, str]]) -> str:
    """``healthy before the steps; degraded after steps 3, 4; healthy after the steps``:
    each status where it was read, in order, the steps in a row with the same status
    together."""
    shown: list[str] = []
    steps: list[str] = []  # the steps in a row with the status ``current``
    current = ""
    for where, status in [*statuses, ("", "")]:  # the last entry ends the last row
        step = where.removeprefix("step ") if where.startswith("step ") else ""
        if step and steps and status == current:
            steps.append(step)
            continue
        if steps:
            shown.append(f"{current} after step{'s' * (len(steps) > 1)} {', '.join(steps)}")
        current, steps = status, [step] if step else []
        if where and not step:
            shown.append(f"{status} {where} the steps")
    return "; ".join(shown)


def _injected(journal: Journal) -> str:
    calls: dict[tuple[str, str], list[int]] = {}
    for e in journal.events(FaultInjected):
        calls.setdefault((e.site, e.fault), []).append(e.call)
    return "; ".join(
        f"{site} {fault} at call{'s' if len(n) > 1 else ''} {', '.join(map(str, n))}"
        for (site, fault), n in calls.items()
    )
