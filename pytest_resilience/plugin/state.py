"""What the plugin's hooks and fixtures share: the run's resolved :class:`Settings` and the
:class:`Totals` its summary sums (in ``config.stash``), each test's :class:`TestState` (in
``item.stash``), and the stash keys and accessors that reach them. Every other module of
the plugin imports this one and this one imports none of them, so that the arrows inside
the plugin point one way; it imports nothing heavy either, as pytest loads it in every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from faults.injector import Injector
    from faults.journal import Recording
    from faults.proxy import FaultProxy
    from faults.spec import Spec
    from faults.verdicts import Broken
    from pytest_resilience.backends.daemon import DaemonProcess
    from pytest_resilience.core.clock import Clock
    from pytest_resilience.core.journal import Journal

__all__ = [
    "DAEMON_SCOPES",
    "MARKER_SPEC",
    "ROUTES",
    "SETTINGS",
    "SHARED_DAEMON",
    "VERDICT_MODES",
    "DaemonScope",
    "Route",
    "Settings",
    "TestState",
    "Totals",
    "VerdictMode",
    "daemon_target",
    "figure_number",
    "settings_of",
    "state_of",
]

DaemonScope = Literal["function", "session"]
DAEMON_SCOPES: Final = ("function", "session")
Route = Literal["hooks", "wire"]
ROUTES: Final = ("hooks", "wire")
#: The figures :class:`Totals` knows how to sum; any other (a ``pytest_resilience_test_figures``
#: implementation's) is summed into :attr:`Totals.extra`.
_KNOWN_FIGURES: Final = frozenset(
    {
        "faults",
        "faults_injected",
        "retries",
        "transitions",
        "fallbacks",
        "leaks",
        "under_faults",
        "reach",
        "retries_by",
        "delays",
        "virtual",
        "wall",
        "verdicts",
        "judged",
        "calls",
        "calls_failed",
        "calls_with_failure",
        "calls_recovered",
        "error_rate",
        "recovery_rate",
    }
)
#: The figures :meth:`Totals.add` sums into :attr:`Totals.counts`.
_SUMMED: Final = (
    "retries",
    "leaks",
    "calls",
    "calls_failed",
    "calls_with_failure",
    "calls_recovered",
)
#: How broken verdicts are reported (``resilience_verdicts``, the ``verdicts`` marker).
VerdictMode = Literal["warn", "fail", "off"]
VERDICT_MODES: Final = ("warn", "fail", "off")


@dataclass(slots=True)
class Totals:
    """The sums of every test's figures, for the terminal summary (gathered from the
    reports, so that the workers of pytest-xdist count too)."""

    tests: int = 0
    under_faults: int = 0
    faults: dict[tuple[str, str], int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    transitions: dict[str, int] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)
    reproduce: list[str] = field(default_factory=list)
    # per site of the run-wide spec: [tests reached, faults fired, why it was not reached]
    reach: dict[str, list[Any]] = field(default_factory=dict)
    # the figures a conftest added (pytest_resilience_test_figures): a number, or the sum of
    # a mapping's numbers, summed over the tests
    extra: dict[str, int] = field(default_factory=dict)
    retries_by: dict[str, int] = field(default_factory=dict)  # by library
    verdicts: dict[str, int] = field(default_factory=dict)  # broken, by verdict
    judged: int = 0  # tests whose verdicts were judged (a fault fired, verdicts not off)
    # seconds: of retry delays recorded (delays), virtual clocks' advance (virtual, over
    # ``virtual_tests`` tests), call phases (wall)
    seconds: dict[str, float] = field(default_factory=dict)
    virtual_tests: int = 0

    def add(self, figures: dict[str, Any]) -> None:
        self.tests += 1
        for site, (reached, fired, why) in figures.get("reach", {}).items():
            row = self.reach.setdefault(site, [0, 0, ""])
            row[0] += int(reached)
            row[1] += int(fired)
            row[2] = row[2] or why
        self.under_faults += int(figures.get("under_faults", 0))
        for site, kinds in figures.get("faults", {}).items():
            for kind, n in kinds.items():
                self.faults[site, kind] = self.faults.get((site, kind), 0) + int(n)
        for key in _SUMMED:
            self.counts[key] = self.counts.get(key, 0) + int(figures.get(key, 0))
        for name, into in (
            ("transitions", self.transitions),
            ("fallbacks", self.fallbacks),
            ("retries_by", self.retries_by),
            ("verdicts", self.verdicts),
        ):
            for key, n in figures.get(name, {}).items():
                into[key] = into.get(key, 0) + int(n)
        self.judged += int(figures.get("judged", 0))
        for key in ("delays", "virtual", "wall"):
            if figures.get(key) is not None:
                self.seconds[key] = self.seconds.get(key, 0.0) + float(figures[key])
        self.virtual_tests += int(figures.get("virtual") is not None)
        for key, value in figures.items():
            number = figure_number(value)
            if key not in _KNOWN_FIGURES and number is not None:
                self.extra[key] = self.extra.get(key, 0) + number


def figure_number(value: object) -> int | None:
    """A figure as one number: itself, or the sum of a mapping's numbers; None otherwise."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and all(isinstance(n, int) for n in value.values()):
        return sum(value.values())
    return None


@dataclass(slots=True)
class Settings:
    """The run's resolved configuration, in ``config.stash``."""

    seed: int
    seed_source: str
    spec: Spec | None = None  # ini < environment < command line, merged; None: no run-wide faults
    # the run-wide spec only counts each site's calls (--fault-sweep's fault-free pass, every
    # site off): the tests run as without it, and the report shows no faults or reach for it
    reach_only: bool = False
    sources: list[tuple[Spec, str]] = field(default_factory=list)  # each spec, and its where
    journal_dir: Path | None = None
    replay: Recording | None = None
    replay_path: str = ""  # as given, for the reproduce command
    leak_check: bool = False
    virtual_time: bool = False
    daemon_scope: DaemonScope = "function"
    daemon_url: str | None = None  # the app's own server, for the daemon.* sites
    route: Route = "hooks"  # how the daemon.* faults reach the `daemon` fixture's traffic
    journal_maxlen: int = 100_000  # events each test's journal keeps
    verdicts: VerdictMode = "warn"  # how broken verdicts are reported
    totals: Totals = field(default_factory=Totals)


@dataclass(slots=True)
class TestState:
    """What the plugin's hooks and the fixtures share about one test (``item.stash``)."""

    nodeid: str
    clock: Clock | None = None  # the ``clock`` fixture's, once requested
    installed: list[Injector] = field(default_factory=list)  # in installation order
    spec: Spec | None = None  # the run-wide/marker spec the test ran under
    leaks: int = 0
    hanging: list[str] = field(default_factory=list)
    daemon: DaemonProcess | None = None  # the ``daemon`` fixture's, once requested
    proxy: FaultProxy | None = None  # in front of it, on the wire route
    journal_maxlen: int = 100_000
    reach: dict[str, list[Any]] = field(default_factory=dict)  # run-wide sites, see Totals
    missed: list[str] = field(default_factory=list)  # faults asked for that never fired
    started: float = 0.0  # the system clock's time as the test began (set at setup)
    clock_start: float | None = None  # the virtual clock's time then, when it has one
    judged: bool = False  # its verdicts were judged: a fault fired, and they are not off
    verdicts: list[Broken] = field(default_factory=list)  # those it broke
    #: write to the journal what the processes the app started did so far (Family.collect)
    gather: list[Callable[[], None]] = field(default_factory=list)
    _journal: Journal | None = None

    @property
    def journal(self) -> Journal:
        """The test's journal (made on first use): fixtures and injectors all write to it."""
        if self._journal is None:
            from pytest_resilience.core.journal import Journal  # noqa: PLC0415 - lazy, see module doc

            self._journal = Journal(maxlen=self.journal_maxlen)
        return self._journal

    @property
    def used(self) -> bool:
        return self._journal is not None or bool(self.installed) or self.leaks > 0

    def uninstall(self, keep: int = 0) -> None:
        """Uninstall the injectors installed after the first ``keep``, innermost first."""
        while len(self.installed) > keep:
            injector = self.installed.pop()
            if injector.installed:
                injector.uninstall()


SETTINGS = pytest.StashKey[Settings]()
STATE = pytest.StashKey[TestState]()
MARKER_SPEC = pytest.StashKey["Spec | None"]()  # a test's faults markers, merged
SHARED_DAEMON = pytest.StashKey["DaemonProcess"]()  # with resilience_daemon_scope = session


def settings_of(config: pytest.Config) -> Settings:
    """The run's :class:`Settings` (``KeyError`` if the plugin is not configured)."""
    return config.stash[SETTINGS]


def state_of(item: pytest.Item) -> TestState:
    """The test's :class:`TestState`, made on first use."""
    state = item.stash.get(STATE, None)
    if state is None:
        maxlen = item.config.stash[SETTINGS].journal_maxlen
        state = item.stash[STATE] = TestState(item.nodeid, journal_maxlen=maxlen)
    return state


def daemon_target(item: pytest.Item) -> DaemonProcess | str | None:
    """What the test's daemon.* faults act on: its ``daemon`` fixture's process, else the
    session's daemon, else ``--daemon-url``; None when it has none of them."""
    state = item.stash.get(STATE, None)
    if state is not None and state.daemon is not None:
        return state.daemon
    shared = item.config.stash.get(SHARED_DAEMON, None)
    if shared is not None:
        return shared
    return item.config.stash[SETTINGS].daemon_url
