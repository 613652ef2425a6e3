"""Running a scenario: :func:`run` resolves its exception names, builds the world, probes
the steady state, runs the steps under the faults, probes again once they are removed, runs
the rollbacks whatever happened, and evaluates ``[expect]`` over the journal of the steps
(and, for ``leaks = "none"``, over what is left running afterwards). :func:`seed_override`
says when a seed given to pytest replaces the files' own.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING, Any, Final

from faults.injector import Injector
from faults.scenario.names import _resolve_names
from faults.scenario.ops import _Runner
from faults.scenario.outcome import Check, Outcome
from faults.scenario.reading import ScenarioError
from faults.scenario.world import _World
from pytest_resilience.core.analytics import Summary, summarize
from pytest_resilience.core.clock import SystemClock, VirtualClock
from pytest_resilience.core.degrade import Level
from pytest_resilience.core.events import (
    AttemptFailed,
    AttemptStarted,
    DegradationChanged,
    Event,
    FallbackUsed,
    FaultInjected,
    Recovered,
    RetryScheduled,
)
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Mapping

    from faults.scenario.model import Scenario, Step
    from faults.scenario.outcome import Stats
    from pytest_resilience.core.clock import Clock
    from pytest_resilience.core.leaks import Leak


_RATE_TOLERANCE: Final = 0.005


def seed_override(fault_seed: object) -> int | None:
    """The seed that replaces the scenarios' own when pytest runs them: the value of
    ``--fault-seed`` *given on the command line* (``config.getoption``, the same on
    pytest-xdist workers), when it is a number; ``None`` (each file's own ``seed``) when it
    is not given or is ``last``. The run's other seeds (random, from the environment or the
    ini file, the last run's, an xdist controller's) never replace a file's own: a scenario
    with ``seed = 1`` injects the same faults in every run unless asked otherwise."""
    if fault_seed is None or isinstance(fault_seed, bool):
        return None
    if isinstance(fault_seed, int):
        return fault_seed
    text = str(fault_seed).strip()
    if text == "last":
        return None
    try:
        return int(text)
    except ValueError:
        return None  # the plugin refuses it as a usage error before any test


def run(scenario: Scenario, *, seed: int | None = None, journal: Journal | None = None) -> Outcome:
    """Run ``scenario``: the steady-state probe, the steps under the faults (seeded by
    ``seed``, default the file's: pass one only when the user asked for it, see
    :func:`seed_override`), the probe again once the faults are removed, and the
    rollbacks, which always run. Then evaluate ``[expect]`` over the journal of the steps.

    The modules of dotted exception names (``on``, ``[target] errors``) are imported first;
    one that cannot be fails the outcome with the file, the line and the key, and nothing
    runs. Returns an :class:`Outcome`; a step that raises something other than a failure
    ends the steps and fails the outcome (``Outcome.error``). ``KeyboardInterrupt``
    propagates, after the rollbacks.
    """
    used_seed = scenario.seed if seed is None else seed
    journal = journal if journal is not None else Journal()
    clock: Clock = VirtualClock() if scenario.clock == "virtual" else SystemClock()
    wall = SystemClock()
    outcome = Outcome(scenario, used_seed, journal=journal)
    try:
        names = _resolve_names(scenario)
    except ScenarioError as exc:
        outcome.error = str(exc)
        outcome.failures.append(outcome.error)
        return outcome
    if scenario.target.callable is None or any(e.site.family == "llama" for e in scenario.faults):
        with contextlib.suppress(ImportError):
            importlib.import_module("llama_cpp")  # before the leak snapshot: not a leak
    before = _leak_snapshot() if scenario.expect.get("leaks") == "none" else None
    started_wall, started = wall.now(), clock.now()
    world = _World(scenario, clock, journal, used_seed, names)
    try:
        first, last = _method(world, _Runner(world, outcome.stats), outcome)
    finally:
        world.close()
    outcome.stats.wall = wall.now() - started_wall
    outcome.stats.elapsed = clock.now() - started
    if outcome.error is not None:
        outcome.failures.insert(0, outcome.error)
    events = journal.events()[first:last]
    outcome.summary = summarize(events)
    outcome.checks += _evaluate(scenario.expect, events, outcome.summary, world, outcome.stats)
    if before is not None:
        leaks = _leaks_since(before)
        outcome.checks.append(Check("leaks", "none", [str(x) for x in leaks], not leaks))
    outcome.failures += [str(c) for c in outcome.checks if not c.held]
    outcome.passed = not outcome.failures
    return outcome


def _method(world: _World, runner: _Runner, outcome: Outcome) -> tuple[int, int]:
    """Set up, probe, run the steps under the faults, probe again; the journal slice
    ``(first, last)`` of the steps. A step's error is recorded in ``outcome.error``."""
    scenario, journal = world.scenario, world.journal
    first = last = len(journal)
    phase = "setting up"
    try:
        world.start()
        probe = scenario.steady_state
        phase = "steady state before the steps"
        if probe is not None and not runner.step(0, probe, count=False):
            outcome.failures.append(f"{phase}: the probe failed")
            return first, last
        if probe is not None and not _status_held(world, outcome, probe, "before"):
            return first, last  # the steady state does not hold: no fault is injected
        first = len(journal)
        injector = Injector(
            scenario.faults,
            seed=outcome.seed,
            scope=scenario.path.name,
            clock=world.clock,
            journal=journal,
            daemon=world.daemon if world.daemon is not None else scenario.target.daemon_url,
            proxy=world.proxy,
            route="wire" if world.proxy is not None else "hooks",
        )
        phase = "a step"
        try:
            with injector:
                for index, step in enumerate(scenario.steps, 1):
                    phase = f"step {index} ({step.op}, line {step.line})"
                    runner.step(index, step)
                    _status_held(world, outcome, step, f"step {index}")
        finally:
            last = len(journal)
        phase = "steady state after the steps"
        if probe is not None and not runner.step(0, probe, count=False):
            outcome.failures.append(f"{phase}: the probe failed")
        elif probe is not None:
            _status_held(world, outcome, probe, "after")
    except ScenarioError as exc:  # the file's fault, found only now (a factory's backend)
        outcome.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - isolation boundary: reported in the outcome; the rollbacks run
        outcome.error = f"{phase} raised {type(exc).__name__}: {exc}"
    return first, last


def _status_held(world: _World, outcome: Outcome, step: Step, where: str) -> bool:
    """Check the resilient client's ``status()`` against ``step.status`` (nothing to check:
    True), recording it in ``outcome`` (``statuses``, a :class:`Check`). The machine's
    resources (memory, disk, CPU load) are left out, so that a scenario reads the same on
    every machine; the status is read, not pinged: it asks the daemon nothing."""
    if step.status is None:
        return True
    assert world.client is not None  # load() refuses a status without a resilient target
    report = world.client.status(resources=())
    actual, reasons = str(report["status"]), report["reasons"]
    assert isinstance(reasons, list)
    outcome.statuses.append((where, actual))
    if where in ("before", "after"):
        label = f"steady_state.status {where} the steps (line {step.line})"
    else:
        label = f"steps.status after {where} (line {step.line})"
    held = actual == step.status
    why = "; ".join(map(str, reasons)) if not held else ""
    outcome.checks.append(Check("status", step.status, actual, held, label, why))
    return held


def _leak_snapshot() -> object:
    from pytest_resilience.core.leaks import snapshot  # noqa: PLC0415

    return snapshot()


def _leaks_since(before: object) -> list[Leak]:
    from pytest_resilience.core.leaks import Snapshot, check  # noqa: PLC0415

    assert isinstance(before, Snapshot)
    return check(before)


def _evaluate(
    expect: Mapping[str, Any], events: list[Event], summary: Summary, world: _World, stats: Stats
) -> list[Check]:
    checks: list[Check] = []

    def add(key: str, expected: Any, actual: Any, held: bool) -> None:
        checks.append(Check(key, expected, actual, held))

    for key, expected in expect.items():
        if key == "success_rate":
            rate = stats.success_rate
            shown = None if rate is None else round(rate, 4)
            add(key, expected, shown, rate is not None and abs(rate - expected) <= _RATE_TOLERANCE)
        elif key == "fallbacks":
            used = list(dict.fromkeys(e.step for e in events if isinstance(e, FallbackUsed)))
            add(key, expected, used, used == expected)
        elif key == "transitions":
            for name, wanted in expected.items():
                actual = list(summary.transitions.get(name, ()))
                add(f"transitions.{name}", wanted, actual, actual == wanted)
        elif key == "max_attempts":
            attempts = [e.attempt for e in events if isinstance(e, AttemptStarted | AttemptFailed)]
            most = max(attempts, default=1)
            add(key, expected, most, most <= expected)
        elif key == "retries":
            add(key, expected, summary.retries, summary.retries == expected)
        elif key == "rejected":
            add(key, expected, summary.rejected, summary.rejected == expected)
        elif key == "min_retry_delay":
            delays = [e.delay for e in events if isinstance(e, RetryScheduled)]
            least = min(delays, default=None)
            add(key, expected, least, least is not None and least >= expected)
        elif key == "degraded_to":
            levels = [e.to_level for e in events if isinstance(e, DegradationChanged)]
            level = levels[-1] if levels else Level.FULL.label
            add(key, expected, level, level == expected)
        elif key == "degradations":
            moves = [
                f"{e.from_level}->{e.to_level}" for e in events if isinstance(e, DegradationChanged)
            ]
            add(key, expected, moves, moves == expected)
        elif key == "partial_kept":
            kept = any(r.kept for r in world.streams)
            add(key, expected, kept, kept == expected)
        elif key == "source_closed":
            closed = bool(world.watched) and all(w.closed for w in world.watched)
            add(key, expected, closed, closed == expected)
        elif key == "resumed_from_checkpoint":
            resumed = any(isinstance(e, Recovered) and e.how == "checkpoint" for e in events)
            add(key, expected, resumed, resumed == expected)
        elif key == "faults_injected":
            fired = sum(isinstance(e, FaultInjected) for e in events)
            add(key, expected, fired, fired == expected)
        # "leaks" is checked by run() after the rollbacks
    return checks
