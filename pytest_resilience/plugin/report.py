"""The report: the header line of the run's seed and faults; for each test, its figures
(faults injected, and the app's reactions: retries by library, breaker transitions,
fallbacks, the retry delays and virtual time waited against the wall time the call took,
the verdicts it broke; leaks, and each run-wide site's reach) as JUnit user properties
(``resilience.*``) and its journal saved under ``--fault-journal``; for a failure, the
faults next to the reactions, the broken verdicts, its journal's timeline and the command
that reproduces it; and the ``resilience`` section of the terminal summary, which sums the
figures of every test from the reports (so that pytest-xdist workers count too). A
conftest may add figures (``pytest_resilience_test_figures``) and change the summary's rows
(``pytest_resilience_summary``), see :mod:`~pytest_resilience.plugin.hookspecs`.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Final

import pytest

from pytest_resilience.plugin.options import CACHE_KEY
from pytest_resilience.plugin.running import reproduce_command
from pytest_resilience.plugin.state import (
    SETTINGS,
    STATE,
    Settings,
    TestState,
    Totals,
    figure_number,
)

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = [
    "Reporter",
    "journal_file_name",
    "pytest_report_header",
    "pytest_runtest_makereport",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
]

_PROP: Final = "resilience.figures"  # the user property that carries a test's figures as JSON
_REPRO: Final = "resilience.reproduce"
_CRASHED: Final = "resilience.crashed"  # on the report of a test whose process crashed
#: Figures that are no JUnit property of their own: a table, or another figure by parts.
_NO_PROPERTY: Final = frozenset({"faults", "reach", "retries_by"})
#: The library of the core's own retries, as ``assert_retried`` names it.
_CORE: Final = "pytest_resilience"
#: The call phase's wall time and the virtual clock's advance (None: no virtual clock).
_TIMES: Final = pytest.StashKey[tuple[float, "float | None"]]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The run's seed and where it came from, its faults, the leak check, virtual time."""
    settings = config.stash.get(SETTINGS, None)
    if settings is None:
        return []
    lines = [f"resilience: --fault-seed={settings.seed} ({settings.seed_source})"]
    if settings.spec is not None and settings.replay is None and not settings.reach_only:
        lines.append(f"resilience: --inject-faults='{settings.spec}'")
    if settings.replay is not None:
        ignored = " (it replaces --inject-faults)" if settings.spec is not None else ""
        lines.append(f"resilience: replaying the faults of '{settings.replay.spec}'{ignored}")
    if settings.leak_check:
        lines.append("resilience: leak check on")
    if settings.virtual_time:
        lines.append("resilience: virtual time on (tests marked real_time excepted)")
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Record the test's figures and reproduce command as user properties (from which the
    summary sums them); add its journal and reproduce command to the report of a failure."""
    state = item.stash.get(STATE, None)
    if state is None or not state.used:
        return (yield)
    settings = item.config.stash[SETTINGS]
    command = None
    if call.when == "call":
        item.stash[_TIMES] = (call.duration, _virtual_advance(state))
    if call.when == "call" and state.spec is not None:
        command = reproduce_command(item, state.spec)
        item.user_properties.append((_REPRO, command))
    if call.when == "teardown":
        figures = _figures(state, item.stash.get(_TIMES, None))
        if settings.reach_only:  # the sweep's own count of calls, not the run's faults
            figures["reach"] = {}
        item.ihook.pytest_resilience_test_figures(item=item, state=state, figures=figures)
        item.user_properties.append((_PROP, json.dumps(figures, sort_keys=True)))
        for key, value in figures.items():
            if key not in _NO_PROPERTY and value is not None:  # None: a rate with no calls
                number = figure_number(value)
                item.user_properties.append(
                    (f"resilience.{key}", value if number is None else number)
                )
        if state.spec is not None:
            item.user_properties.append(("resilience.seed", settings.seed))
        if settings.journal_dir is not None and state.spec is not None:
            _save_journal(settings, state)
    report: pytest.TestReport = yield
    if state.hanging:
        report.sections.append(("resilience: hanging when the timeout fired", "\n".join(
            f"  {site}" for site in state.hanging)))  # fmt: skip
    if call.when == "call" and state.missed:
        lines = "\n".join(f"  {text}" for text in state.missed)
        report.sections.append(("resilience: faults asked for that never fired", lines))
    if report.failed and call.when == "call" and (state.spec is not None or len(state.journal)):
        reactions = _reactions(_figures(state, item.stash.get(_TIMES, None)))
        report.sections.append(("resilience: faults and reactions", "\n".join(reactions)))
        if state.verdicts:
            from faults.verdicts import format_broken  # noqa: PLC0415 - a fault fired

            report.sections.append(("resilience: verdicts broken", format_broken(state.verdicts)))
        timeline = state.journal.timeline(last=50, since=_origin(state))
        report.sections.append(("resilience: journal", timeline or "empty"))
        if command is not None:
            report.sections.append(("resilience: reproduce with", command))
    return report


def _origin(state: TestState) -> float:
    """When the test started on the clock its events carry: its virtual clock's time when
    the test began, else the monotonic time then."""
    return state.started if state.clock_start is None else state.clock_start


def _virtual_advance(state: TestState) -> float | None:
    """How far the test's virtual clock moved since the test began (None: it has none)."""
    if state.clock is None or state.clock_start is None:
        return None
    return max(0.0, state.clock.now() - state.clock_start)


def _figures(state: TestState, times: tuple[float, float | None] | None) -> dict[str, Any]:
    """The test's figures, from its journal (and ``times``: its call phase's wall time, its
    virtual clock's advance): what the summary sums."""
    from pytest_resilience.core.analytics import summarize  # noqa: PLC0415
    from pytest_resilience.core.events import AppRetry, FaultInjected, RetryScheduled  # noqa: PLC0415

    journal = state.journal
    faults: dict[str, dict[str, int]] = {}
    for event in journal.events(FaultInjected):
        kind = event.fault.partition("(")[0]
        by_kind = faults.setdefault(event.site, {})
        by_kind[kind] = by_kind.get(kind, 0) + 1
    summary = summarize(journal)
    transitions: dict[str, int] = {}
    for source, steps in summary.transitions.items():
        for step in steps:
            key = f"{source}: {step}" if source else step
            transitions[key] = transitions.get(key, 0) + 1
    fallbacks: dict[str, int] = {}
    for steps in summary.fallbacks.values():
        for step in steps:
            fallbacks[step] = fallbacks.get(step, 0) + 1
    retries_by = dict(summary.app_retries)
    core = summary.retries - sum(retries_by.values())
    if core:
        retries_by[_CORE] = core
    delays = sum(e.delay for e in journal.events(AppRetry))
    delays += sum(e.delay for e in journal.events(RetryScheduled))
    verdicts: dict[str, int] = {}
    for broken in state.verdicts:
        verdicts[broken.verdict] = verdicts.get(broken.verdict, 0) + 1
    timed: dict[str, float] = {}
    if times is not None:
        timed["wall"] = round(times[0], 6)
        if times[1] is not None:
            timed["virtual"] = round(times[1], 6)
    return {
        "faults": faults,
        "faults_injected": sum(sum(k.values()) for k in faults.values()),
        "retries": summary.retries,
        "transitions": transitions,
        "fallbacks": fallbacks,
        "leaks": state.leaks,
        # run-wide or marker faults, or faults the test injected itself (the fixture)
        "under_faults": int(state.spec is not None or bool(faults)),
        "reach": state.reach,
        "retries_by": retries_by,
        "delays": round(delays, 6),
        **timed,
        "verdicts": verdicts,
        "judged": int(state.judged),
        # calls: how the test's calls ended (see summarize()); the rates are None when
        # there is nothing to divide by
        "calls": summary.calls,
        "calls_failed": summary.calls_failed,
        "calls_with_failure": summary.calls_with_failure,
        "calls_recovered": summary.calls_recovered,
        "error_rate": summary.error_rate,
        "recovery_rate": summary.call_recovery_rate,
    }


def _reactions(figures: dict[str, Any]) -> list[str]:
    """The faults next to the app's reactions, then the time waited against the time taken:
    "3 faults (...) -> 2 retries (tenacity x2), 1 fallback (canned x1)" and "45 s of retry
    delays, 45 s of virtual time, in 4 ms of wall time"."""
    faults = {f"{site} {kind}": n for site, kinds in figures["faults"].items()
              for kind, n in kinds.items()}  # fmt: skip
    reactions = [
        _count(figures["retries"], "retry", figures["retries_by"], plural="retries"),
        _count(sum(figures["fallbacks"].values()), "fallback", figures["fallbacks"]),
        _count(sum(figures["transitions"].values()), "breaker transition", figures["transitions"]),
    ]
    done = ", ".join(r for r in reactions if r) or "no retry, fallback or breaker transition"
    lines = [f"{_count(figures['faults_injected'], 'fault', faults) or '0 faults'} -> {done}"]
    if "wall" in figures:
        lines.append(_waited(figures["delays"], figures.get("virtual"), figures["wall"]))
    return lines


def _count(n: int, noun: str, parts: dict[str, int], *, plural: str = "") -> str:
    """``2 retries (tenacity x2)``; ``""`` for none."""
    if not n:
        return ""
    text = f"{n} {noun if n == 1 else plural or noun + 's'}"
    return text + (f" ({_counted(parts)})" if parts else "")


def _waited(delays: float, virtual: float | None, wall: float) -> str:
    text = f"{_duration(delays)} of retry delays"
    if virtual is not None:
        text += f", {_duration(virtual)} of virtual time,"
    return f"{text} in {_duration(wall)} of wall time"


def _duration(seconds: float) -> str:
    """``45 s``, ``1.5 s``, ``4.2 ms``, ``310 us``: three figures at most, in a unit that
    suits."""
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.3g} s"
    if seconds >= 0.001:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


def journal_file_name(nodeid: str) -> str:
    """A file name for ``nodeid``'s journal: readable, safe on every OS, unique per node id."""
    import hashlib  # noqa: PLC0415

    digest = hashlib.sha1(nodeid.encode(), usedforsecurity=False).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("._")[:80]
    return f"{readable}-{digest}.jsonl"


def _save_journal(settings: Settings, state: TestState) -> None:
    from faults.journal import save  # noqa: PLC0415

    assert settings.journal_dir is not None
    assert state.spec is not None
    settings.journal_dir.mkdir(parents=True, exist_ok=True)
    path = settings.journal_dir / journal_file_name(state.nodeid)
    save(state.journal, path, spec=state.spec, seed=settings.seed, scope=state.nodeid)


class Reporter:
    """Gathers the figures of every test's reports: on the xdist controller too, where the
    reports come from the workers with their user properties."""

    def __init__(self, totals: Totals) -> None:
        self.totals = totals
        self.crashed: list[tuple[str, str]] = []  # (node id, how), tests whose process died

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.user_properties:
            return
        props = dict(report.user_properties)
        if report.failed and _CRASHED in props:
            self.crashed.append((report.nodeid, str(props[_CRASHED])))
        if report.when == "teardown" and _PROP in props:
            self.totals.add(json.loads(str(props[_PROP])))
        if report.when == "call" and report.failed and _REPRO in props:
            self.totals.reproduce.append(str(props[_REPRO]))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Keep the seed for ``--fault-seed last``, but only of a run that injected a fault: a
    ``--collect-only`` or a run without faults must not overwrite the one worth repeating."""
    config = session.config
    settings = config.stash.get(SETTINGS, None)
    cache = getattr(config, "cache", None)
    if settings is None or cache is None or hasattr(config, "workerinput"):
        return
    if sum(settings.totals.faults.values()):
        cache.set(CACHE_KEY, settings.seed)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The ``resilience`` section: a table of the run's totals, then the commands that
    reproduce its failures under faults. A run with nothing to say (no faults, no leak
    found) has none, unless a ``pytest_resilience_summary`` implementation adds rows."""
    settings = config.stash.get(SETTINGS, None)
    if settings is None or config.get_verbosity() < -1:  # -qq: as quiet as pytest's own summary
        return
    totals = settings.totals
    worth = totals.under_faults or totals.faults or totals.counts.get("leaks") or totals.reach
    rows = _rows(settings) if worth else []
    crashed = getattr(config.pluginmanager.get_plugin("resilience-reporter"), "crashed", [])
    if crashed:
        rows.append(("tests crashed", str(len(crashed))))
        rows += [(f"  {nodeid}", how) for nodeid, how in crashed]
    config.hook.pytest_resilience_summary(config=config, totals=totals, rows=rows)
    if not rows and not totals.reproduce:
        return
    write = terminalreporter.write_line
    terminalreporter.section("resilience")
    width = max((len(str(label)) for label, _ in rows), default=0)
    for label, value in rows:
        write(f"{label!s:<{width}}  {value}")
    if totals.reproduce:
        write("reproduce the failures under faults with:")
        for command in totals.reproduce:
            write(f"  {command}")


def _rows(settings: Settings) -> list[tuple[str, str]]:
    """The summary's table, as (label, value) rows."""
    from pytest_resilience.core.analytics import rate_rows  # noqa: PLC0415

    totals = settings.totals
    rows: list[tuple[str, str]] = [
        ("fault seed", f"{settings.seed} (rerun with --fault-seed {settings.seed})"),
        ("tests under faults", str(totals.under_faults)),
    ]
    faults = sorted(totals.faults.items())
    rows.append(("faults injected", str(sum(n for _, n in faults))))
    rows += [(f"  {site} {kind}", str(n)) for (site, kind), n in faults]
    rows.append(("retries scheduled", str(totals.counts.get("retries", 0))))
    rows += [(f"  by {library}", str(n)) for library, n in sorted(totals.retries_by.items()) if n]
    rows.append(("breaker transitions", _counted(totals.transitions)))
    rows.append(("fallbacks used", _counted(totals.fallbacks)))
    seconds = totals.seconds
    if "wall" in seconds:
        virtual = seconds.get("virtual") if totals.virtual_tests else None
        rows.append(("time", _waited(seconds.get("delays", 0.0), virtual, seconds["wall"])))
    counts = totals.counts
    rows += rate_rows(
        counts.get("calls", 0),
        counts.get("calls_failed", 0),
        counts.get("calls_with_failure", 0),
        counts.get("calls_recovered", 0),
    )
    rows.append(("verdicts broken", _verdicts(settings)))
    if settings.leak_check or totals.counts.get("leaks"):
        rows.append(("leaks found", str(totals.counts.get("leaks", 0))))
    if totals.reach:
        rows.append(("run-wide sites", "reached in / faults fired"))
    for site, (reached, fired, why) in sorted(totals.reach.items()):
        text = f"{reached} of {totals.tests} tests, {fired} faults"
        rows.append((f"  {site}", text + (f" (never reached: {why})" if not reached else "")))
    return rows


def _verdicts(settings: Settings) -> str:
    """The verdicts broken, by verdict, and in how many tests they were judged; or why
    none was: a verdict judges what the app did after a fault."""
    totals = settings.totals
    if not totals.judged:
        if settings.verdicts == "off":
            return "not judged (resilience_verdicts = off)"
        return "none judged: no fault fired"
    broken = sum(totals.verdicts.values())
    listed = f" ({_counted(totals.verdicts)})" if broken else ""
    tests = "test" if totals.judged == 1 else "tests"
    return f"{broken}{listed} in {totals.judged} {tests} judged"


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items())) or "none"
