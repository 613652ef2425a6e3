"""The plugin's options: the command-line options, ini keys and environment variables it
adds, and :func:`resolve`, which reads them once at configure time into the run's
:class:`~pytest_resilience.plugin.state.Settings` and turns every bad value into a
``pytest.UsageError`` that says where the value came from. Each option has an ini key and an
environment variable; a marker beats the command line, which beats the environment, which
beats the ini file, and fault specs from several places are merged (:func:`faults.merge`):
for a site named by several, the one of higher precedence wins. A value ending in
``.toml`` is a scenario file whose ``[faults] spec`` is used. ``--virtual-time`` runs every
test as if marked ``virtual_time`` (:func:`in_virtual_time`); ``--daemon-route`` and a
``faults`` marker's ``route=`` pick how daemon.* faults reach the ``daemon`` fixture
(:func:`route_of`).

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
``--isolate``               ``resilience_isolate``        ``PYTEST_ISOLATE``
``resilience_scenarios``    (ini only: folders whose ``*.toml`` scenarios are collected)
``resilience_daemon_scope`` (ini only: ``function`` or ``session``, the ``daemon`` process)
``resilience_journal_maxlen`` (ini only: events each test's journal keeps, 100000)
``resilience_verdicts``     (ini only: ``warn``, ``fail`` or ``off``, broken verdicts)
``resilience_concurrent_model_check`` (ini only: ``false`` turns off the detector of one
                            ``llama_cpp.Llama`` used by two generations at once)
``--fault-sweep`` and ``--fault-sweep-*``, ``resilience_sweep_sites``,
``resilience_sweep_faults`` (the fault sweep: :mod:`.sweep`)
==========================  ============================  ==========================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pytest

from pytest_resilience.plugin.state import (
    DAEMON_SCOPES,
    ROUTES,
    SETTINGS,
    VERDICT_MODES,
    DaemonScope,
    Route,
    Settings,
    VerdictMode,
)

if TYPE_CHECKING:
    from pathlib import Path

    from faults.spec import Spec

__all__ = [
    "CACHE_KEY",
    "ENVIRONMENT",
    "MARKERS",
    "WORKER_KEY",
    "concurrent_model_check",
    "in_virtual_time",
    "isolating",
    "parse_spec",
    "pytest_addoption",
    "resolve",
    "route_of",
]

ENV_FAULTS: Final = "PYTEST_INJECT_FAULTS"
ENV_SEED: Final = "PYTEST_FAULT_SEED"
ENV_JOURNAL: Final = "PYTEST_FAULT_JOURNAL"
ENV_REPLAY: Final = "PYTEST_REPLAY_JOURNAL"
ENV_LEAKS: Final = "PYTEST_LEAK_CHECK"
ENV_VIRTUAL: Final = "PYTEST_VIRTUAL_TIME"
ENV_DAEMON_URL: Final = "PYTEST_DAEMON_URL"
ENV_DAEMON_ROUTE: Final = "PYTEST_DAEMON_ROUTE"
ENV_ISOLATE: Final = "PYTEST_ISOLATE"
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
    ENV_ISOLATE,
)
CACHE_KEY: Final = "resilience/fault_seed"  # the seed that --fault-seed last reuses
WORKER_KEY: Final = "resilience_fault_seed"  # the controller's seed, in an xdist worker's input
_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})
#: The plugin's markers, as ``pytest --markers`` lists them.
MARKERS: Final = (
    "faults(spec, route=None): run this test under these faults (beats --inject-faults per "
    "site); route='wire' puts a fault proxy in front of the `daemon` fixture",
    "no_faults: run this test without any injected faults",
    "virtual_time(wall=False, sleeps=True, start=None): give the test a virtual `clock`; "
    "wall=True (the `wall` extra) makes time.time/datetime follow it, sleeps runs "
    "tenacity/stamina/backoff/openai sleeps on it",
    "real_time: run this test in real time, even under --virtual-time",
    "no_leak_check: do not fail this test for leaked threads, fds or processes",
    "verdicts(mode=None, ignore=()): report this test's broken verdicts as mode says (warn, "
    "fail, off; default: resilience_verdicts), not judging those named in ignore",
)


@dataclass(frozen=True, slots=True)
class _Value:
    """A configured value and where it came from (for error messages)."""

    text: str
    where: str


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
    parser.addini("resilience_verdicts", "broken verdicts under faults: warn (default), fail, off")
    group.addoption(
        "--daemon-route",
        dest="resilience_daemon_route",
        metavar="hooks|wire",
        help="how daemon.* faults reach the `daemon` fixture: hooks in this process's HTTP "
        f"clients (default), or a fault proxy on the wire (env {ENV_DAEMON_ROUTE})",
    )
    parser.addini("resilience_daemon_route", "daemon.* faults through hooks or on the wire")
    group.addoption(
        "--isolate",
        action="store_true",
        default=None,
        dest="resilience_isolate",
        help="run every test in a child process of its own, so that a crash (SIGABRT, as "
        "llama.cpp aborts) fails that test only; tests whose faults name crash always do "
        f"(env {ENV_ISOLATE}=1)",
    )
    parser.addini("resilience_isolate", "run every test in a child process (true/false)")
    parser.addini("resilience_leak_check", "fail tests that leak (true/false)")
    parser.addini("resilience_virtual_time", "run every test on a virtual clock (true/false)")
    parser.addini("resilience_scenarios", "folders whose *.toml scenario files are collected",
                  type="paths")  # fmt: skip
    parser.addini("resilience_daemon_scope",
                  "the `daemon` fixture's process: function (default) or session")  # fmt: skip
    parser.addini("resilience_concurrent_model_check",
                  "refuse a call on a llama_cpp.Llama while another generation on it is "
                  "running or its stream open (true, the default, or false)")  # fmt: skip
    _add_sweep_options(group, parser)


def _add_sweep_options(group: Any, parser: pytest.Parser) -> None:
    """``--fault-sweep`` and its options (:mod:`.sweep`, docs/sweep.md)."""
    group.addoption("--fault-sweep", action="store_true", default=False,
                    dest="resilience_fault_sweep",
                    help="after the run, run each test again under each plausible fault at "
                    "each site it reached, one at a time, and show which it survives")  # fmt: skip
    group.addoption("--fault-sweep-faults", action="append", metavar="SITE=F,F;SITE+=F",
                    dest="resilience_fault_sweep_faults",
                    help="the faults tried per site: = replaces the defaults, += adds")  # fmt: skip
    for name, metavar, text in (
        ("json", "PATH", "write every cell of the sweep, with its command, as JSON"),
        ("html", "PATH", "write the sweep as one self-contained HTML heat map"),
        ("baseline", "PATH", "fail only on cells that got worse than this earlier sweep's JSON"),
        ("budget", "N|DURATION", "run at most N cells, or cells estimated to fit in 90s, 5m"),
        ("cell-timeout", "DURATION", "end a cell as hung after this real time (default 60s)"),
    ):
        dest = f"resilience_fault_sweep_{name.replace('-', '_')}"
        group.addoption(f"--fault-sweep-{name}", dest=dest, metavar=metavar, help=text)
    parser.addini("resilience_sweep_sites", "py:MODULE:QUALNAME sites the fault sweep also tries",
                  type="linelist")  # fmt: skip
    parser.addini("resilience_sweep_faults", "the fault sweep's faults per site (one set a line)",
                  type="linelist")  # fmt: skip


def concurrent_model_check(config: pytest.Config) -> bool:
    """Whether the detector of concurrent ``llama_cpp.Llama`` use is on: the ini key
    ``resilience_concurrent_model_check`` (true unless it says false)."""
    text = str(config.getini("resilience_concurrent_model_check")).strip().lower()
    if not text or text in _TRUE or text in _FALSE:
        return text not in _FALSE
    raise pytest.UsageError(
        f"ini option resilience_concurrent_model_check ({config.inipath}): expected true or "
        f"false, not {text!r}"
    )


def isolating(config: pytest.Config) -> bool:
    """Whether every test runs in a child process of its own (``--isolate``)."""
    return _bool(config, "resilience_isolate", ENV_ISOLATE)


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
    from faults.parser import parse  # noqa: PLC0415 - only when faults are asked for
    from faults.spec import SpecError  # noqa: PLC0415 - likewise

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


def _daemon_scope_of(config: pytest.Config) -> DaemonScope:
    value = str(config.getini("resilience_daemon_scope")).strip() or "function"
    if value not in DAEMON_SCOPES:
        raise pytest.UsageError(
            f"ini option resilience_daemon_scope ({config.inipath}): expected "
            f"{' or '.join(DAEMON_SCOPES)}, not {value!r}"
        )
    return value  # type: ignore[return-value]  # checked just above


def _verdicts_of(config: pytest.Config) -> VerdictMode:
    value = str(config.getini("resilience_verdicts")).strip() or "warn"
    if value not in VERDICT_MODES:
        raise pytest.UsageError(
            f"ini option resilience_verdicts ({config.inipath}): expected "
            f"{', '.join(VERDICT_MODES)}, not {value!r}"
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


def _route(value: object, where: str) -> Route:
    if value not in ROUTES:
        raise pytest.UsageError(f"{where}: expected {' or '.join(ROUTES)}, not {value!r}")
    return value  # checked just above


def route_of(item: pytest.Item) -> Route:
    """The test's daemon route: its ``faults`` marker's ``route=``, else the run's."""
    for marker in item.iter_markers("faults"):
        if "route" in marker.kwargs:
            return _route(marker.kwargs["route"], f"@pytest.mark.faults on {item.nodeid}")
    return item.config.stash[SETTINGS].route


def in_virtual_time(item: pytest.Item, settings: Settings) -> bool:
    """Whether ``item`` runs on a virtual ``clock``: the closer of its ``virtual_time`` and
    ``real_time`` markers decides, else ``--virtual-time``."""
    for marker in item.iter_markers():  # the function's first, then its class's, module's
        if marker.name in ("virtual_time", "real_time"):
            return marker.name == "virtual_time"
    return settings.virtual_time


def _seed(config: pytest.Config) -> tuple[int, str]:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None and WORKER_KEY in workerinput:
        return int(workerinput[WORKER_KEY]), "from the xdist controller"
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
        last = cache.get(CACHE_KEY, None)
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


def resolve(config: pytest.Config) -> Settings:
    """The run's settings, from every option, ini key and environment variable (a bad one
    is a ``pytest.UsageError`` now, before any test)."""
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
    settings.verdicts = _verdicts_of(config)
    return settings
