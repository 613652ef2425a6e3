"""The pytest plugin (entry point ``pytest11: resilience``).

pytest imports this module in every run of every user who installs the package, so it
imports nothing heavy at module level: each hook imports what it needs when it runs, and a
run without faults never imports :mod:`faults`.

Options (each with an ini key and an environment variable; a marker beats the command line,
which beats the environment, which beats the ini file):

==========================  ============================  ==========================
option                      ini                           environment
==========================  ============================  ==========================
``--inject-faults SPEC``    ``resilience_inject_faults``  ``PYTEST_INJECT_FAULTS``
``--fault-seed N|last``     ``resilience_fault_seed``     ``PYTEST_FAULT_SEED``
``--fault-journal DIR``     ``resilience_fault_journal``  ``PYTEST_FAULT_JOURNAL``
``--replay-journal FILE``   ``resilience_replay_journal`` ``PYTEST_REPLAY_JOURNAL``
``--[no-]leak-check``       ``resilience_leak_check``     ``PYTEST_LEAK_CHECK``
``--[no-]virtual-time``     ``resilience_virtual_time``   ``PYTEST_VIRTUAL_TIME``
``--daemon-url URL``        ``resilience_daemon_url``     ``PYTEST_DAEMON_URL``
``--daemon-route ROUTE``    ``resilience_daemon_route``   ``PYTEST_DAEMON_ROUTE``
``resilience_scenarios``    (ini only: folders whose ``*.toml`` scenarios are collected)
``resilience_daemon_scope`` (ini only: ``function`` or ``session``, the ``daemon`` process)
``resilience_journal_maxlen`` (ini only: events each test's journal keeps, 100000)
==========================  ============================  ==========================

Fault specs from several sources are merged (:func:`faults.merge`): for a site named by
several, the one of higher precedence wins. A value ending in ``.toml`` is a scenario file
whose ``[faults] spec`` is used. Markers: ``faults(spec)``, ``no_faults``,
``virtual_time(wall=False, sleeps=True)``, ``real_time``, ``no_leak_check``.

``--virtual-time`` gives every test the ``clock`` fixture, as if each were marked
``virtual_time``: injected waits (``timeout``, ``latency``, ``stall``) and the sync sleeps
of tenacity, stamina, backoff and the openai client take no real time, and a hang that
nothing can end fails at once naming its site. ``@pytest.mark.real_time`` keeps a test in real time.

The daemon.* sites act on the test's daemon: the ``daemon`` fixture's process when the test
uses it, else the session's daemon, else the server at ``--daemon-url`` (an app's own); a
test with none of these runs as if the daemon.* sites were not named. A fault that a test
asked for without chance (no ``pct%``: ``1*refuse``, ``@2lost``) and that never fired gives
the test a :class:`faults.FaultNotReached` warning naming the site and the likely reason;
the summary says, for each site of the run-wide spec, in how many tests it was reached.

``--daemon-route wire`` (or ``@pytest.mark.faults(..., route="wire")``) puts a fault proxy in
front of the ``daemon`` fixture's process, so that ``daemon.base_url`` is the proxy and the
daemon.* faults act on the wire, for any client in any process, in real time; the default,
``hooks``, acts in this process's HTTP clients, on the test's clock.

Each test under faults runs its call phase inside an :class:`faults.Injector` seeded by
(run seed, node id, site), on the test's ``clock`` fixture when it uses one (else real
time), writing to the test's ``journal``. A failing test shows its journal's timeline and
the command line that reproduces it; the terminal summary sums the figures of every test
(gathered from the reports, so pytest-xdist workers count too), which are also recorded as
JUnit user properties (``resilience.*``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator
    from pathlib import Path

    from faults.injector import Injector
    from faults.journal import Recording
    from faults.proxy import FaultProxy
    from faults.spec import Spec
    from pytest_resilience.backends.daemon import DaemonProcess
    from pytest_resilience.backends.llama import LlamaBackend
    from pytest_resilience.backends.resilient import ResilientClient
    from pytest_resilience.core.clock import Clock
    from pytest_resilience.core.events import Journal
    from pytest_resilience.plugin.fixtures import FaultsFactory, LeakCheck, TestClock

__all__ = [
    "ENVIRONMENT",
    "SHARED_DAEMON",
    "Settings",
    "TestState",
    "in_virtual_time",
    "settings_of",
    "state_of",
]

ENV_FAULTS: Final = "PYTEST_INJECT_FAULTS"
ENV_SEED: Final = "PYTEST_FAULT_SEED"
ENV_JOURNAL: Final = "PYTEST_FAULT_JOURNAL"
ENV_REPLAY: Final = "PYTEST_REPLAY_JOURNAL"
ENV_LEAKS: Final = "PYTEST_LEAK_CHECK"
ENV_VIRTUAL: Final = "PYTEST_VIRTUAL_TIME"
ENV_DAEMON_URL: Final = "PYTEST_DAEMON_URL"
ENV_DAEMON_ROUTE: Final = "PYTEST_DAEMON_ROUTE"
#: Every environment variable the plugin reads.
ENVIRONMENT: Final = (
    ENV_FAULTS,
    ENV_SEED,
    ENV_JOURNAL,
    ENV_REPLAY,
    ENV_LEAKS,
    ENV_VIRTUAL,
    ENV_DAEMON_URL,
    ENV_DAEMON_ROUTE,
)
_CACHE_KEY: Final = "resilience/fault_seed"
_WORKER_KEY: Final = "resilience_fault_seed"
_PROP: Final = "resilience.figures"  # the user property that carries a test's figures as JSON
_REPRO: Final = "resilience.reproduce"
_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})
_DaemonScope = Literal["function", "session"]
_DAEMON_SCOPES: Final = ("function", "session")
_Route = Literal["hooks", "wire"]
_ROUTES: Final = ("hooks", "wire")


# ----------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class _Value:
    """A configured value and where it came from (for error messages)."""

    text: str
    where: str


@dataclass(slots=True)
class _Totals:
    tests: int = 0
    under_faults: int = 0
    faults: dict[tuple[str, str], int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    transitions: dict[str, int] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)
    reproduce: list[str] = field(default_factory=list)
    # per site of the run-wide spec: [tests reached, faults fired, why it was not reached]
    reach: dict[str, list[Any]] = field(default_factory=dict)

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
        for key in ("retries", "leaks"):
            self.counts[key] = self.counts.get(key, 0) + int(figures.get(key, 0))
        for name, into in (("transitions", self.transitions), ("fallbacks", self.fallbacks)):
            for key, n in figures.get(name, {}).items():
                into[key] = into.get(key, 0) + int(n)


@dataclass(slots=True)
class Settings:
    """The run's resolved configuration, in ``config.stash``."""

    seed: int
    seed_source: str
    spec: Spec | None = None  # ini < environment < command line, merged; None: no run-wide faults
    sources: list[tuple[Spec, str]] = field(default_factory=list)  # each spec, and its where
    journal_dir: Path | None = None
    replay: Recording | None = None
    replay_path: str = ""  # as given, for the reproduce command
    leak_check: bool = False
    virtual_time: bool = False
    daemon_scope: _DaemonScope = "function"
    daemon_url: str | None = None  # the app's own server, for the daemon.* sites
    route: _Route = "hooks"  # how the daemon.* faults reach the `daemon` fixture's traffic
    journal_maxlen: int = 100_000  # events each test's journal keeps
    totals: _Totals = field(default_factory=_Totals)


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
    reach: dict[str, list[Any]] = field(default_factory=dict)  # run-wide sites, see _Totals
    missed: list[str] = field(default_factory=list)  # faults asked for that never fired
    started: float = 0.0  # the system clock's time as the test began (set at setup)
    clock_start: float | None = None  # the virtual clock's time then, when it has one
    _journal: Journal | None = None

    @property
    def journal(self) -> Journal:
        """The test's journal (made on first use): fixtures and injectors all write to it."""
        if self._journal is None:
            from pytest_resilience.core.events import Journal  # noqa: PLC0415 - lazy, see module doc

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


_SETTINGS = pytest.StashKey[Settings]()
_STATE = pytest.StashKey[TestState]()
_MARKER_SPEC = pytest.StashKey["Spec | None"]()
SHARED_DAEMON = pytest.StashKey["DaemonProcess"]()  # with resilience_daemon_scope = session


def settings_of(config: pytest.Config) -> Settings:
    """The run's :class:`Settings` (``KeyError`` if the plugin is not configured)."""
    return config.stash[_SETTINGS]


def state_of(item: pytest.Item) -> TestState:
    """The test's :class:`TestState`, made on first use."""
    state = item.stash.get(_STATE, None)
    if state is None:
        maxlen = item.config.stash[_SETTINGS].journal_maxlen
        state = item.stash[_STATE] = TestState(item.nodeid, journal_maxlen=maxlen)
    return state


# ----------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("resilience", "pytest-resilience: fault injection and leak check")
    group.addoption(
        "--inject-faults",
        action="append",
        dest="resilience_inject_faults",
        metavar="SPEC|FILE.toml",
        help=f"run the tests under these faults (repeatable; env {ENV_FAULTS}), "
        "e.g. 'llama.generate=2*none;llama.stream=@1stall(after=5)'",
    )
    group.addoption(
        "--fault-seed",
        dest="resilience_fault_seed",
        metavar="N|last",
        help=f"seed of the probabilistic faults; 'last' reuses the last run's (env {ENV_SEED})",
    )
    group.addoption(
        "--fault-journal",
        dest="resilience_fault_journal",
        metavar="DIR",
        help=f"write one JSON-lines journal per test under faults to DIR (env {ENV_JOURNAL})",
    )
    group.addoption(
        "--replay-journal",
        dest="resilience_replay_journal",
        metavar="FILE",
        help=f"replay the faults of a saved journal in every test (env {ENV_REPLAY})",
    )
    group.addoption(
        "--leak-check",
        action="store_true",
        default=None,
        dest="resilience_leak_check",
        help=f"fail tests that leave threads, fds, processes behind (env {ENV_LEAKS}=1)",
    )
    group.addoption(
        "--no-leak-check",
        action="store_false",
        dest="resilience_leak_check",
        help="turn the leak check off",
    )
    parser.addini("resilience_inject_faults", "fault specs (one a line)", type="linelist")
    parser.addini("resilience_fault_seed", "seed of the probabilistic faults (N or last)")
    parser.addini("resilience_fault_journal", "folder for the per-test fault journals")
    parser.addini("resilience_replay_journal", "a saved journal whose faults every test replays")
    group.addoption(
        "--virtual-time",
        action="store_true",
        default=None,
        dest="resilience_virtual_time",
        help="run every test on a virtual clock, as if marked virtual_time: injected waits "
        f"and sync library sleeps take no real time (env {ENV_VIRTUAL}=1)",
    )
    group.addoption(
        "--no-virtual-time",
        action="store_false",
        dest="resilience_virtual_time",
        help="turn run-wide virtual time off",
    )
    group.addoption(
        "--daemon-url",
        dest="resilience_daemon_url",
        metavar="URL",
        help="the base URL of the app's own model server, for the daemon.* faults of tests "
        f"that use no `daemon` fixture (env {ENV_DAEMON_URL})",
    )
    parser.addini("resilience_daemon_url", "the base URL of the app's own model server")
    parser.addini("resilience_journal_maxlen", "events each test's journal keeps (100000)")
    group.addoption(
        "--daemon-route",
        dest="resilience_daemon_route",
        metavar="hooks|wire",
        help="how daemon.* faults reach the `daemon` fixture: hooks in this process's HTTP "
        f"clients (default), or a fault proxy on the wire (env {ENV_DAEMON_ROUTE})",
    )
    parser.addini("resilience_daemon_route", "daemon.* faults through hooks or on the wire")
    parser.addini("resilience_leak_check", "fail tests that leak (true/false)")
    parser.addini("resilience_virtual_time", "run every test on a virtual clock (true/false)")
    parser.addini("resilience_scenarios", "folders whose *.toml scenario files are collected",
                  type="paths")  # fmt: skip
    parser.addini("resilience_daemon_scope",
                  "the `daemon` fixture's process: function (default) or session")  # fmt: skip


def _values(config: pytest.Config, option: str, ini: str, env: str) -> list[_Value]:
    """Every value given, lowest precedence first: ini file, environment, command line (so
    that CI can override a project's ini file from the environment)."""
    found: list[_Value] = []
    raw = config.getini(ini)
    where = f"ini option {ini} ({config.inipath})"
    if isinstance(raw, list):
        found += [_Value(str(v).strip(), where) for v in raw if str(v).strip()]
    elif str(raw).strip():
        found.append(_Value(str(raw).strip(), where))
    if os.environ.get(env, "").strip():
        found.append(_Value(os.environ[env].strip(), f"environment variable {env}"))
    cli = config.getoption(option, None)
    flag = "--" + option.removeprefix("resilience_").replace("_", "-")
    for v in cli if isinstance(cli, list) else [] if cli is None else [cli]:
        found.append(_Value(str(v), flag))
    return found


def _bool(config: pytest.Config, name: str, env: str) -> bool:
    cli = config.getoption(name)
    if cli is not None:
        return bool(cli)
    for value in reversed(_values(config, "", name, env)):
        text = value.text.lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise pytest.UsageError(f"{value.where}: expected true or false, not {value.text!r}")
    return False


def parse_spec(value: str, where: str, base: Path | None = None) -> Spec:
    """Parse a fault spec (or read a scenario file's), raising ``pytest.UsageError``
    that names ``where`` it came from and shows the caret of a ``SpecError``."""
    from faults.spec import SpecError, parse  # noqa: PLC0415 - only when faults are asked for

    text = value.strip()
    if text.endswith(".toml"):
        return _scenario_spec(text, where, base)
    try:
        spec = parse(text)
    except SpecError as exc:
        raise pytest.UsageError(f"{where}: malformed fault spec: {exc}") from None
    if not len(spec):
        raise pytest.UsageError(f"{where}: the fault spec is empty: it would inject nothing")
    return spec


def _scenario_spec(name: str, where: str, base: Path | None) -> Spec:
    from pathlib import Path  # noqa: PLC0415

    from faults.scenario import ScenarioError, spec_of  # noqa: PLC0415

    path = Path(name) if base is None else base / name
    try:
        parsed = spec_of(path)
    except ScenarioError as exc:
        raise pytest.UsageError(f"{where}: cannot read scenario {exc}") from None
    if not len(parsed):
        raise pytest.UsageError(
            f"{where}: {path} has no [faults] spec: as a fault spec it would inject nothing"
        )
    return parsed


def _check_repeated_sites(sources: list[tuple[Spec, str]]) -> None:
    """Two values from the same place (two --inject-faults, two ini lines) that name the
    same site are a usage error, as the same site twice in one spec is; across places the
    higher precedence wins, as documented."""
    seen: dict[tuple[str, str], str] = {}
    for spec, where in sources:
        for entry in spec.entries:
            key = (where, str(entry.site))
            if key in seen:
                raise pytest.UsageError(
                    f"{where}: site {entry.site} is given twice ('{seen[key]}' and "
                    f"'{entry}'): join its terms into one chain with '->'"
                )
            seen[key] = str(entry)


def _daemon_scope_of(config: pytest.Config) -> _DaemonScope:
    value = str(config.getini("resilience_daemon_scope")).strip() or "function"
    if value not in _DAEMON_SCOPES:
        raise pytest.UsageError(
            f"ini option resilience_daemon_scope ({config.inipath}): expected "
            f"{' or '.join(_DAEMON_SCOPES)}, not {value!r}"
        )
    return value  # type: ignore[return-value]  # checked just above


def _journal_maxlen(config: pytest.Config) -> int:
    text = str(config.getini("resilience_journal_maxlen")).strip()
    if not text:
        return 100_000
    if not text.isdigit() or int(text) < 1:
        raise pytest.UsageError(
            f"ini option resilience_journal_maxlen ({config.inipath}): expected a whole "
            f"number of events, 1 or more, not {text!r}"
        )
    return int(text)


def _route(value: object, where: str) -> _Route:
    if value not in _ROUTES:
        raise pytest.UsageError(f"{where}: expected {' or '.join(_ROUTES)}, not {value!r}")
    return value  # checked just above


def route_of(item: pytest.Item) -> _Route:
    """The test's daemon route: its ``faults`` marker's ``route=``, else the run's."""
    for marker in item.iter_markers("faults"):
        if "route" in marker.kwargs:
            return _route(marker.kwargs["route"], f"@pytest.mark.faults on {item.nodeid}")
    return item.config.stash[_SETTINGS].route


def _seed(config: pytest.Config) -> tuple[int, str]:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None and _WORKER_KEY in workerinput:
        return int(workerinput[_WORKER_KEY]), "from the xdist controller"
    given = _values(config, "resilience_fault_seed", "resilience_fault_seed", ENV_SEED)
    value = given[-1] if given else None
    cache = getattr(config, "cache", None)
    if value is None:
        seed, source = int.from_bytes(os.urandom(4), "big"), "random"
    elif value.text == "last":
        if cache is None:
            raise pytest.UsageError(
                f"{value.where}: 'last' reuses the seed kept in the pytest cache, which is "
                "disabled (-p no:cacheprovider)"
            )
        last = cache.get(_CACHE_KEY, None)
        if isinstance(last, int):
            seed, source = last, "the last run's"
        else:
            seed, source = int.from_bytes(os.urandom(4), "big"), "random: no last run"
    else:
        try:
            seed, source = int(value.text), value.where
        except ValueError:
            raise pytest.UsageError(
                f"{value.where}: the fault seed must be an integer or 'last', not {value.text!r}"
            ) from None
    return seed, source


def _journal_files(config: pytest.Config, settings: Settings) -> None:
    """``--fault-journal`` (checked writable now, not after the first test) and
    ``--replay-journal`` (read and validated now)."""
    from pathlib import Path  # noqa: PLC0415

    base = config.invocation_params.dir
    journals = _values(config, "resilience_fault_journal", "resilience_fault_journal", ENV_JOURNAL)
    if journals:
        settings.journal_dir = base / Path(journals[-1].text)
        try:
            settings.journal_dir.mkdir(parents=True, exist_ok=True)
            probe = settings.journal_dir / ".resilience-write-check"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise pytest.UsageError(
                f"{journals[-1].where}: cannot write journals to {settings.journal_dir}: {exc}"
            ) from None
    replays = _values(config, "resilience_replay_journal", "resilience_replay_journal", ENV_REPLAY)
    if replays:
        from faults.journal import JournalFileError, load  # noqa: PLC0415

        try:
            settings.replay = load(base / replays[-1].text)
            settings.replay_path = replays[-1].text
        except (OSError, JournalFileError) as exc:
            raise pytest.UsageError(f"{replays[-1].where}: cannot replay: {exc}") from None


def _daemon_options(config: pytest.Config, settings: Settings) -> None:
    """``--daemon-url`` (a URL with a host) and ``--daemon-route`` (hooks or wire)."""
    urls = _values(config, "resilience_daemon_url", "resilience_daemon_url", ENV_DAEMON_URL)
    if urls:
        from faults.target import address_of  # noqa: PLC0415

        try:
            address_of(urls[-1].text)
        except ValueError as exc:
            raise pytest.UsageError(f"{urls[-1].where}: {exc}") from None
        settings.daemon_url = urls[-1].text
    routes = _values(config, "resilience_daemon_route", "resilience_daemon_route", ENV_DAEMON_ROUTE)
    if routes:
        settings.route = _route(routes[-1].text, routes[-1].where)


@pytest.hookimpl(trylast=True)  # after the cache provider has set config.cache
def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "faults(spec, route=None): run this test under these faults (beats --inject-faults per "
        "site); route='wire' puts a fault proxy in front of the `daemon` fixture",
        "no_faults: run this test without any injected faults",
        "virtual_time(wall=False, sleeps=True, start=None): give the test a virtual `clock`; "
        "wall=True (the `wall` extra) makes time.time/datetime follow it, sleeps runs "
        "tenacity/stamina/backoff/openai sleeps on it",
        "real_time: run this test in real time, even under --virtual-time",
        "no_leak_check: do not fail this test for leaked threads, fds or processes",
    ):
        config.addinivalue_line("markers", line)
    seed, source = _seed(config)
    settings = Settings(seed=seed, seed_source=source)
    base = config.invocation_params.dir
    settings.sources = [  # ini < environment < command line
        (parse_spec(v.text, v.where, base), v.where)
        for v in _values(config, "resilience_inject_faults", "resilience_inject_faults", ENV_FAULTS)
    ]
    _check_repeated_sites(settings.sources)
    specs = [spec for spec, _ in settings.sources]
    if specs:
        from faults.spec import merge  # noqa: PLC0415

        merged = merge(*specs)
        settings.spec = merged if len(merged) else None
    _journal_files(config, settings)
    settings.leak_check = _bool(config, "resilience_leak_check", ENV_LEAKS)
    settings.virtual_time = _bool(config, "resilience_virtual_time", ENV_VIRTUAL)
    settings.daemon_scope = _daemon_scope_of(config)
    _daemon_options(config, settings)
    settings.journal_maxlen = _journal_maxlen(config)
    config.stash[_SETTINGS] = settings
    config.pluginmanager.register(_Reporter(settings.totals), "resilience-reporter")
    if settings.leak_check:
        config.pluginmanager.register(_LeakCheckPlugin(), "resilience-leak-check")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "resilience-xdist")
    if config.pluginmanager.hasplugin("timeout"):
        config.pluginmanager.register(_TimeoutHooks(), "resilience-timeout")


class _XdistHooks:
    """Registered only when pytest-xdist is there: the workers use the controller's seed."""

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[_WORKER_KEY] = settings_of(node.config).seed


class _LeakCheckPlugin:
    """Registered only with the leak check on: an autouse fixture around every test."""

    @pytest.fixture(autouse=True)
    def _resilience_leak_check(self, request: pytest.FixtureRequest) -> Iterator[None]:
        if request.node.get_closest_marker("no_leak_check") is not None:
            yield
            return
        from pytest_resilience.plugin.fixtures import leak_check_fixture  # noqa: PLC0415

        yield from (None for _ in leak_check_fixture(request))


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash.get(_SETTINGS, None)
    if settings is None:
        return []
    lines = [f"resilience: --fault-seed={settings.seed} ({settings.seed_source})"]
    if settings.spec is not None and settings.replay is None:
        lines.append(f"resilience: --inject-faults='{settings.spec}'")
    if settings.replay is not None:
        ignored = " (it replaces --inject-faults)" if settings.spec is not None else ""
        lines.append(f"resilience: replaying the faults of '{settings.replay.spec}'{ignored}")
    if settings.leak_check:
        lines.append("resilience: leak check on")
    if settings.virtual_time:
        lines.append("resilience: virtual time on (tests marked real_time excepted)")
    return lines


# ----------------------------------------------------------------------- collection


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Parse every ``faults`` marker now, so a bad one is a usage error before any test;
    give the ``clock`` fixture to the tests that run in virtual time."""
    settings = config.stash[_SETTINGS]
    for spec, where in settings.sources:
        _check_installable(spec, where)
    for item in items:
        markers = [m for m in item.iter_markers("faults") if m.args or "spec" in m.kwargs]
        route_of(item)  # a bad route= is a usage error now
        if markers:
            specs = []
            for marker in reversed(markers):  # farthest (module, class) first
                text = marker.kwargs.get("spec", marker.args[0] if marker.args else None)
                path, line, _ = item.location
                where = f"@pytest.mark.faults on {item.nodeid} ({path}:{(line or 0) + 1})"
                if not isinstance(text, str):
                    raise pytest.UsageError(f"{where}: expected a fault spec string, got {text!r}")
                specs.append(parse_spec(text, where, config.invocation_params.dir))
                _check_installable(specs[-1], where)
            from faults.spec import merge  # noqa: PLC0415

            item.stash[_MARKER_SPEC] = merge(*specs)
        if in_virtual_time(item, settings):
            names = getattr(item, "fixturenames", None)
            if isinstance(names, list) and "clock" not in names:
                names.append("clock")  # requested as if named in the signature


def _check_installable(spec: Spec, where: str) -> None:
    """What would fail every test is a usage error now, once: a ``py:`` site whose module or
    attribute does not exist, a ``raise`` of a type that does not resolve or that ``raise``
    refuses. Test modules are imported by now, so sys.path is as the tests see it."""
    from faults.sites.base import check_terms  # noqa: PLC0415
    from faults.sites.py import resolve  # noqa: PLC0415
    from faults.spec import SpecError  # noqa: PLC0415

    for entry in spec.entries:
        try:
            check_terms(entry)
            if entry.site.family == "py":
                resolve(entry)
        except SpecError as exc:
            raise pytest.UsageError(f"{where}: {exc}") from None


def in_virtual_time(item: pytest.Item, settings: Settings) -> bool:
    """Whether ``item`` runs on a virtual ``clock``: the closer of its ``virtual_time`` and
    ``real_time`` markers decides, else ``--virtual-time``."""
    for marker in item.iter_markers():  # the function's first, then its class's, module's
        if marker.name in ("virtual_time", "real_time"):
            return marker.name == "virtual_time"
    return settings.virtual_time


def _effective_spec(item: pytest.Item, settings: Settings) -> Spec | None:
    if item.get_closest_marker("no_faults") is not None:
        return None
    marker = item.stash.get(_MARKER_SPEC, None)
    if marker is None:
        return settings.spec
    if settings.spec is None:
        return marker
    return settings.spec.merged(marker)


# ----------------------------------------------------------------------- running


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Seed the core's own randomness (a retry's jitter) per (run seed, test), as the
    faults are: the same seed waits the same times, in any order, on any worker."""
    settings = item.config.stash.get(_SETTINGS, None)
    if settings is None:
        return (yield)
    from pytest_resilience.core.seeding import seeded  # noqa: PLC0415 - small, and per test

    with seeded(settings.seed, item.nodeid):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    settings = item.config.stash[_SETTINGS]
    spec = _effective_spec(item, settings)
    replaying = settings.replay is not None and item.get_closest_marker("no_faults") is None
    state = item.stash.get(_STATE, None)
    run_wide: Injector | None = None
    if spec is not None or replaying:
        state = state_of(item)
        _adopt_fixtures(item, state)
    keep = 0 if state is None else len(state.installed)
    if state is not None and (spec is not None or replaying):
        run_wide = _injector(item, settings, state, spec)
        try:
            run_wide.install()
        except ValueError as exc:  # SpecError: a py: site that cannot be patched
            pytest.fail(f"cannot install the faults '{run_wide.spec}': {exc}", pytrace=False)
        state.installed.append(run_wide)
        state.spec = run_wide.spec
    undo = _per_example(item, run_wide)
    watching = _watch_the_app(item, state, run_wide is not None)
    passed = False
    try:
        result = yield
        passed = True
        return result
    finally:
        if watching is not None:
            watching.close()
        undo()
        state = item.stash.get(_STATE, None)  # the ``faults`` fixture may have made it
        if state is not None:
            missed = _unreached(item, settings, state, run_wide)
            state.uninstall(keep)  # what the test installed (the ``faults`` fixture) too
            if passed:
                _warn_unreached(item, missed)
            else:
                state.missed = missed


_OBSERVING: Final = frozenset({"journal", "faults", "clock"})


def _watch_the_app(item: pytest.Item, state: TestState | None, under_faults: bool) -> Any:
    """Record the app's own reactions (retries by tenacity, stamina, backoff, the openai
    client; fallbacks it marks) into the test's journal, in every test that has faults to
    react to or a journal, a clock or the faults fixture to read them with."""
    names = set(getattr(item, "fixturenames", ()))
    if not (under_faults or names & _OBSERVING):
        return None
    from faults.observe import watch  # noqa: PLC0415

    state = state_of(item) if state is None else state
    _adopt_fixtures(item, state)
    return watch(state.journal, clock=state.clock)


def _per_example(item: pytest.Item, injector: Injector | None) -> Callable[[], None]:
    """Under a hypothesis ``@given`` test, restart the run-wide faults for each example, so
    that ``1*none`` means the first call of every example (the same for each, as hypothesis
    needs to shrink), not of the first example only. Returns the undo."""
    hypothesis: Any = getattr(getattr(item, "obj", None), "hypothesis", None)
    inner = getattr(hypothesis, "inner_test", None)
    if injector is None or inner is None:
        return lambda: None
    import functools  # noqa: PLC0415

    @functools.wraps(inner)
    def each_example(*args: Any, **kwargs: Any) -> Any:
        injector.restart()
        return inner(*args, **kwargs)

    hypothesis.inner_test = each_example
    return lambda: setattr(hypothesis, "inner_test", inner)


def _unreached(
    item: pytest.Item, settings: Settings, state: TestState, run_wide: Injector | None
) -> list[str]:
    """The faults this test asked for that never fired (the ``faults`` fixture's, the
    marker's); for the run-wide spec, the figures of each site instead."""
    marker = item.stash.get(_MARKER_SPEC, None)
    own = {str(e.site) for e in marker.entries} if marker is not None else set()
    missed = [
        f"{u.site}: {u.reason}"
        for injector in state.installed
        for u in injector.unreached()
        if injector is not run_wide or u.site in own
    ]
    if run_wide is not None and settings.spec is not None:
        for entry in settings.spec.entries:
            site = str(entry.site)
            if site in own:
                continue
            schedule = run_wide.schedule(entry.site)
            why = "" if schedule.calls else run_wide.reason(entry.site)
            state.reach[site] = [int(schedule.calls > 0), schedule.fired, why]
    return missed


def _warn_unreached(item: pytest.Item, missed: list[str]) -> None:
    if not missed:
        return
    import warnings  # noqa: PLC0415

    from faults.injector import FaultNotReached  # noqa: PLC0415

    path, line, _ = item.reportinfo()
    errors: list[str] = []
    for text in missed:
        try:
            warnings.warn_explicit(
                FaultNotReached(f"a fault asked for never fired: {text}"),
                FaultNotReached,
                filename=str(path),
                lineno=(line or 0) + 1,
            )
        except FaultNotReached as exc:  # -W error: the test fails, without our traceback
            errors.append(f"FaultNotReached: {exc}")
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


def daemon_target(item: pytest.Item) -> DaemonProcess | str | None:
    """What the test's daemon.* faults act on: its ``daemon`` fixture's process, else the
    session's daemon, else ``--daemon-url``; None when it has none of them."""
    state = item.stash.get(_STATE, None)
    if state is not None and state.daemon is not None:
        return state.daemon
    shared = item.config.stash.get(SHARED_DAEMON, None)
    if shared is not None:
        return shared
    return item.config.stash[_SETTINGS].daemon_url


def _adopt_fixtures(item: pytest.Item, state: TestState) -> None:
    """Use a suite's own ``clock`` and ``journal`` fixtures (overriding ours) if it has them."""
    funcargs: dict[str, object] = getattr(item, "funcargs", {})
    clock_module, events_module = (
        sys.modules.get(f"pytest_resilience.core.{m}") for m in ("clock", "events")
    )
    theirs = funcargs.get("clock")
    if (
        state.clock is None
        and clock_module is not None
        and isinstance(theirs, clock_module.VirtualClock)
    ):
        state.clock = theirs
        state.clock_start = theirs.now()
    theirs = funcargs.get("journal")
    if (
        state._journal is None
        and events_module is not None
        and isinstance(theirs, events_module.Journal)
    ):
        state._journal = theirs


def _injector(
    item: pytest.Item, settings: Settings, state: TestState, spec: Spec | None
) -> Injector:
    from faults.injector import Injector  # noqa: PLC0415

    clock, daemon, proxy = state.clock, daemon_target(item), state.proxy
    route: _Route = "wire" if proxy is not None else "hooks"
    if settings.replay is not None:
        # the journal replaces the run-wide spec; a marker's sites replace the journal's
        return Injector.from_recording(
            settings.replay,
            clock=clock,
            journal=state.journal,
            daemon=daemon,
            proxy=proxy,
            route=route,
            overrides=item.stash.get(_MARKER_SPEC, None),
        )
    assert spec is not None
    return Injector(
        spec,
        seed=settings.seed,
        scope=item.nodeid,
        clock=clock,
        journal=state.journal,
        daemon=daemon,
        proxy=proxy,
        route=route,
    )


def reproduce_command(item: pytest.Item, spec: Spec | str) -> str:
    """The command line that reruns ``item`` as it ran: its node id as seen from where
    pytest was started, the faults (the spec and seed, or the journal replayed), and every
    option that changes what the faults do (virtual time, the daemon's URL and route)."""
    settings = item.config.stash[_SETTINGS]
    parts = ["pytest", _quote(_node_argument(item))]
    if settings.replay is not None:
        parts += ["--replay-journal", _quote(settings.replay_path)]
    else:
        parts += ["--inject-faults", _quote(str(spec)), "--fault-seed", str(settings.seed)]
    if settings.virtual_time:
        parts.append("--virtual-time")
    if settings.daemon_url is not None:
        parts += ["--daemon-url", _quote(settings.daemon_url)]
    if settings.route != "hooks":
        parts += ["--daemon-route", settings.route]
    return " ".join(parts)


def _node_argument(item: pytest.Item) -> str:
    """``item``'s node id with its path relative to the directory pytest was started in
    (node ids are relative to the rootdir, which may be above it)."""
    path, sep, rest = item.nodeid.partition("::")
    here = item.config.invocation_params.dir
    relative = os.path.relpath(item.config.rootpath / path, here)
    return relative.replace(os.sep, "/") + sep + rest


def _quote(text: str) -> str:
    import shlex  # noqa: PLC0415

    return shlex.quote(text) if "'" in text else f"'{text}'"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    state = item.stash.get(_STATE, None)
    if state is None or not state.used:
        return (yield)
    settings = item.config.stash[_SETTINGS]
    if call.when == "call" and state.spec is not None:
        item.user_properties.append((_REPRO, reproduce_command(item, state.spec)))
    if call.when == "teardown":
        figures = _figures(state)
        item.user_properties.append((_PROP, json.dumps(figures, sort_keys=True)))
        item.user_properties += [
            (f"resilience.{k}", v if isinstance(v, int) else sum(v.values()))
            for k, v in figures.items()
            if k not in ("faults", "reach")
        ]
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
        timeline = state.journal.timeline(last=50, since=_origin(state))
        report.sections.append(("resilience: journal", timeline or "empty"))
        if state.spec is not None:
            command = reproduce_command(item, state.spec)
            report.sections.append(("resilience: reproduce with", command))
    return report


def _origin(state: TestState) -> float:
    """When the test started on the clock its events carry: its virtual clock's time when
    the test began, else the monotonic time then."""
    return state.started if state.clock_start is None else state.clock_start


def _figures(state: TestState) -> dict[str, Any]:
    from pytest_resilience.core.analytics import summarize  # noqa: PLC0415
    from pytest_resilience.core.events import FaultInjected  # noqa: PLC0415

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
    }


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


# ----------------------------------------------------------------------- summary


class _Reporter:
    """Gathers the figures of every test's reports: on the xdist controller too, where the
    reports come from the workers with their user properties."""

    def __init__(self, totals: _Totals) -> None:
        self.totals = totals

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.user_properties:
            return
        props = dict(report.user_properties)
        if report.when == "teardown" and _PROP in props:
            self.totals.add(json.loads(str(props[_PROP])))
        if report.when == "call" and report.failed and _REPRO in props:
            self.totals.reproduce.append(str(props[_REPRO]))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Keep the seed for ``--fault-seed last``, but only of a run that injected a fault: a
    ``--collect-only`` or a run without faults must not overwrite the one worth repeating."""
    config = session.config
    settings = config.stash.get(_SETTINGS, None)
    cache = getattr(config, "cache", None)
    if settings is None or cache is None or hasattr(config, "workerinput"):
        return
    if sum(settings.totals.faults.values()):
        cache.set(_CACHE_KEY, settings.seed)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    settings = config.stash.get(_SETTINGS, None)
    if settings is None:
        return
    totals = settings.totals
    if not (totals.under_faults or totals.faults or totals.counts.get("leaks") or totals.reach):
        return
    if config.get_verbosity() < -1:  # -qq: as quiet as pytest's own summary
        return
    write = terminalreporter.write_line
    terminalreporter.section("resilience")
    rows: list[tuple[str, str]] = [
        ("fault seed", f"{settings.seed} (rerun with --fault-seed {settings.seed})"),
        ("tests under faults", str(totals.under_faults)),
    ]
    faults = sorted(totals.faults.items())
    rows.append(("faults injected", str(sum(n for _, n in faults))))
    rows += [(f"  {site} {kind}", str(n)) for (site, kind), n in faults]
    rows.append(("retries scheduled", str(totals.counts.get("retries", 0))))
    rows.append(("breaker transitions", _counted(totals.transitions)))
    rows.append(("fallbacks used", _counted(totals.fallbacks)))
    if settings.leak_check or totals.counts.get("leaks"):
        rows.append(("leaks found", str(totals.counts.get("leaks", 0))))
    if totals.reach:
        rows.append(("run-wide sites", "reached in / faults fired"))
    for site, (reached, fired, why) in sorted(totals.reach.items()):
        text = f"{reached} of {totals.tests} tests, {fired} faults"
        rows.append((f"  {site}", text + (f" (never reached: {why})" if not reached else "")))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        write(f"{label:<{width}}  {value}")
    if totals.reproduce:
        write("reproduce the failures under faults with:")
        for command in totals.reproduce:
            write(f"  {command}")


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items())) or "none"


# ----------------------------------------------------------------------- pytest-timeout


def hanging_sites() -> list[str]:
    """The fault sites some thread (or the running loop's task) is hanging in right now."""
    sites = sys.modules.get("faults.sites")
    found: list[str] = []
    if sites is None:
        return found
    code = sites.SiteFaults.hang.__code__
    for frame in sys._current_frames().values():
        f: Any = frame
        while f is not None:
            if f.f_code is code:
                owner = f.f_locals.get("self")
                found.append(f"{getattr(owner, 'name', '?')} ({f.f_locals.get('kind', '?')})")
            f = f.f_back
    asyncio = sys.modules.get("asyncio")
    loop = asyncio.events._get_running_loop() if asyncio is not None else None
    if asyncio is not None and loop is not None:
        found += [
            t.get_name().partition("(hung in ")[2].rstrip(")")
            for t in asyncio.all_tasks(loop)
            if "(hung in " in t.get_name()
        ]
    return found


class _TimeoutHooks:
    """Registered only when pytest-timeout is there: say which site was hanging."""

    @pytest.hookimpl(wrapper=True, optionalhook=True)
    def pytest_timeout_set_timer(
        self, item: pytest.Item, settings: Any
    ) -> Generator[None, object, object]:
        result = yield
        import signal  # noqa: PLC0415
        import threading  # noqa: PLC0415

        def note() -> None:
            found = hanging_sites()
            if found:
                state_of(item).hanging = found
                sys.stderr.write(f"\nresilience: hanging in {', '.join(found)}\n")

        handler = signal.getsignal(signal.SIGALRM) if hasattr(signal, "SIGALRM") else None
        if getattr(settings, "method", "") == "signal" and callable(handler):

            def on_alarm(signum: int, frame: Any) -> None:
                __tracebackhide__ = True
                note()
                handler(signum, frame)

            signal.signal(signal.SIGALRM, on_alarm)
        else:
            for thread in threading.enumerate():
                function = getattr(thread, "function", None)
                if thread.name.endswith(item.nodeid) and callable(function):
                    thread.function = _before(note, function)  # type: ignore[attr-defined]
        return result


def _before(first: Callable[[], None], then: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        first()
        return then(*args, **kwargs)

    return run


# ----------------------------------------------------------------------- fixtures
# Thin declarations: the implementations (and their imports) live in fixtures.py, which is
# imported only when a test asks for one of them.


@pytest.fixture
def journal(request: pytest.FixtureRequest) -> Journal:
    """The test's :class:`~pytest_resilience.Journal`; injected faults land in it too."""
    return state_of(request.node).journal


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> Iterator[TestClock]:
    """A :class:`~pytest_resilience.plugin.fixtures.TestClock` (a VirtualClock) for this test."""
    from pytest_resilience.plugin.fixtures import clock_fixture  # noqa: PLC0415

    yield from clock_fixture(request)


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> Iterator[FaultsFactory]:
    """``faults(spec, **options)`` installs an injector for the rest of the test; returns it."""
    from pytest_resilience.plugin.fixtures import faults_fixture  # noqa: PLC0415

    yield from faults_fixture(request)


@pytest.fixture
def leak_check(request: pytest.FixtureRequest) -> Iterator[LeakCheck]:
    """Fail the test if it leaves threads, fds, child processes or registered resources."""
    from pytest_resilience.plugin.fixtures import leak_check_fixture  # noqa: PLC0415

    yield from leak_check_fixture(request)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The path of the built-in tiny GGUF model (written on first use, never downloaded)."""
    from pytest_resilience.backends.tiny import tiny_model_path  # noqa: PLC0415

    return tiny_model_path()


@pytest.fixture
def llama(tiny_model: Path) -> Iterator[LlamaBackend]:
    """A :class:`LlamaBackend` on the tiny model (``n_threads=1``), closed at teardown."""
    from pytest_resilience.plugin.fixtures import llama_fixture  # noqa: PLC0415

    yield from llama_fixture(tiny_model)


def _daemon_scope(fixture_name: str, config: pytest.Config) -> _DaemonScope:
    return settings_of(config).daemon_scope


@pytest.fixture(scope=_daemon_scope)
def _resilience_daemon_process(
    request: pytest.FixtureRequest, tiny_model: Path
) -> Iterator[DaemonProcess]:
    """The process behind ``daemon``; lives as long as ``resilience_daemon_scope`` says."""
    from pytest_resilience.plugin.fixtures import daemon_process_fixture  # noqa: PLC0415

    yield from daemon_process_fixture(request, tiny_model)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    from pytest_resilience.core.clock import SystemClock  # noqa: PLC0415 - small, once per run

    state_of(item).started = SystemClock().now()  # the origin of a real-time journal's times
    # Before any of the test's fixtures, so that the leak check's "before" already has it:
    # a session daemon that the previous test killed or paused runs again for this one.
    shared = item.config.stash.get(SHARED_DAEMON, None)
    if shared is not None and "daemon" in getattr(item, "fixturenames", ()):
        from pytest_resilience.plugin.fixtures import revive  # noqa: PLC0415

        revive(shared)


@pytest.fixture
def daemon(
    request: pytest.FixtureRequest, _resilience_daemon_process: DaemonProcess
) -> Iterator[DaemonProcess]:
    """A running :class:`DaemonProcess` on loopback with the tiny model, writing to the test's
    journal. Stopped at teardown, or shared by the session (``resilience_daemon_scope``);
    a shared one is running at the start of every test, whatever the test before did to it."""
    from pytest_resilience.plugin.fixtures import daemon_fixture  # noqa: PLC0415

    yield from daemon_fixture(request, _resilience_daemon_process)


@pytest.fixture
def resilient_client(
    request: pytest.FixtureRequest, daemon: DaemonProcess, tiny_model: Path
) -> Iterator[ResilientClient]:
    """A :class:`ResilientClient`: the ``daemon`` first, the tiny model in process after."""
    from pytest_resilience.plugin.fixtures import resilient_fixture  # noqa: PLC0415

    yield from resilient_fixture(request, daemon, tiny_model)


# ---------------------------------------------------------------------- scenario files


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect ``*.toml`` scenario files: in a ``resilience_scenarios`` folder, or named."""
    if file_path.suffix != ".toml" or not _is_scenario_file(parent.config, file_path):
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


def _is_scenario_file(config: pytest.Config, path: Path) -> bool:
    root = config.rootpath
    folders = [(root / str(f)).resolve() for f in config.getini("resilience_scenarios")]
    named = {(config.invocation_params.dir / a.split("::")[0]).resolve() for a in config.args}
    path = path.resolve()
    if path in named or any(f in path.parents for f in folders):
        return True
    # a folder named on the command line collects the scenarios in it
    return any(n.is_dir() and n in path.parents and n.name == "scenarios" for n in named)


class ScenarioFailed(Exception):
    """A scenario did not hold; the message is the readable report."""


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        yield ScenarioItem.from_parent(self, name=self.path.stem)


class ScenarioItem(pytest.Item):
    """One scenario file, replayed as a test: steady state, steps, expectations, rollbacks."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_marker("no_faults")  # the scenario's own [faults] are the faults

    def runtest(self) -> None:
        from faults import scenario  # noqa: PLC0415 - only runs that collect scenarios pay

        try:
            loaded = scenario.load(self.path)
        except scenario.ScenarioError as exc:
            raise ScenarioFailed(str(exc)) from exc
        seed = scenario.seed_override(self.config.getoption("resilience_fault_seed"))
        outcome = scenario.run(loaded, seed=seed)
        if not outcome.passed:
            raise ScenarioFailed(scenario.format_failure(outcome))

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario {self.path.name}"
