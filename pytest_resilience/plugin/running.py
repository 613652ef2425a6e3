"""Running a test: its call phase runs inside an :class:`faults.Injector` seeded by (run
seed, node id, site), on the test's ``clock`` fixture when it uses one (else real time) and
writing to the test's ``journal``, with the core's own randomness seeded the same way; the
daemon.* sites act on the test's daemon (:func:`~pytest_resilience.plugin.state.daemon_target`),
and a test with none runs as if they were not named. A virtual-time test whose event loop
does not run on its clock fails instead of waiting in real time. A fault the test asked for
without chance that never fired gives it a :class:`faults.FaultNotReached` warning naming
the site and the likely reason; for the run-wide spec, each site's reach is kept for the
summary.
:func:`reproduce_command` writes the command line that reruns a test as it ran.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Final

import pytest

from pytest_resilience.plugin.collection import effective_spec
from pytest_resilience.plugin.state import (
    MARKER_SPEC,
    SETTINGS,
    SHARED_DAEMON,
    STATE,
    Route,
    Settings,
    TestState,
    daemon_target,
    state_of,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

    from faults.children import Family
    from faults.injector import Injector
    from faults.spec import Spec

__all__ = [
    "pytest_runtest_call",
    "pytest_runtest_protocol",
    "pytest_runtest_setup",
    "reproduce_command",
]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Seed the core's own randomness (a retry's jitter) per (run seed, test), as the
    faults are: the same seed waits the same times, in any order, on any worker."""
    settings = item.config.stash.get(SETTINGS, None)
    if settings is None:
        return (yield)
    from pytest_resilience.core.seeding import seeded  # noqa: PLC0415 - small, and per test

    with seeded(settings.seed, item.nodeid):
        return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Note when the test began, and revive the session's daemon for a test that uses it."""
    from pytest_resilience.core.clock import SystemClock  # noqa: PLC0415 - small, once per run

    state_of(item).started = SystemClock().now()  # the origin of a real-time journal's times
    # Before any of the test's fixtures, so that the leak check's "before" already has it:
    # a session daemon that the previous test killed or paused runs again for this one.
    shared = item.config.stash.get(SHARED_DAEMON, None)
    if shared is not None and "daemon" in getattr(item, "fixturenames", ()):
        from pytest_resilience.plugin.fixtures import revive  # noqa: PLC0415

        revive(shared)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Run the call phase under the test's faults (run-wide, its markers', or replayed),
    watching the app's reactions; then uninstall what the test installed, and warn of the
    faults it asked for that never fired."""
    settings = item.config.stash[SETTINGS]
    spec = effective_spec(item, settings)
    replaying = settings.replay is not None and item.get_closest_marker("no_faults") is None
    state = item.stash.get(STATE, None)
    run_wide: Injector | None = None
    if spec is not None or replaying:
        state = state_of(item)
        _adopt_fixtures(item, state)
    keep = 0 if state is None else len(state.installed)
    family: Family | None = None
    if state is not None and (spec is not None or replaying):
        run_wide = _injector(item, settings, state, spec)
        family = _install(run_wide)
        if family is not None:
            state.gather.append(family.collect)
        state.installed.append(run_wide)
        # counting calls only (the sweep's fault-free pass), the test runs under its markers'
        state.spec = item.stash.get(MARKER_SPEC, None) if settings.reach_only else run_wide.spec
    undo = _per_example(item, run_wide)
    watching = _watch_the_app(item, state, run_wide is not None)
    loops_on = _loops_on_clock(item)
    passed = False
    try:
        if loops_on is not None:
            from pytest_resilience.plugin.async_time import check_before_call  # noqa: PLC0415

            check_before_call(item, loops_on)
        result = yield
        if loops_on is not None:
            from pytest_resilience.plugin.async_time import check_after_call  # noqa: PLC0415

            check_after_call(item, loops_on)
        passed = True
        return result
    finally:
        if watching is not None:
            watching.close()
        undo()
        state = item.stash.get(STATE, None)  # the ``faults`` fixture may have made it
        if state is not None:
            missed = _unreached(item, settings, state, run_wide)
            state.uninstall(keep)  # what the test installed (the ``faults`` fixture) too
            if family is not None:
                family.close()  # after _unreached: it counts what the family's processes did
                state.gather.remove(family.collect)
            if passed:
                _warn_unreached(item, missed)
            else:
                state.missed = missed


_OBSERVING: Final = frozenset({"journal", "faults", "clock"})


def _install(injector: Injector) -> Family | None:
    """Install the run-wide injector, its faults shared with the processes the app starts
    (:mod:`faults.children`); the family, to close once the injector is uninstalled."""
    from faults.children import share  # noqa: PLC0415

    family = share(injector)
    try:
        injector.install()
    except ValueError as exc:  # SpecError: a py: site that cannot be patched
        if family is not None:
            family.close()
        pytest.fail(f"cannot install the faults '{injector.spec}': {exc}", pytrace=False)
    return family


def _loops_on_clock(item: pytest.Item) -> Any:
    """The test's clock when the event loops it makes run on it (virtual time), else None."""
    state = item.stash.get(STATE, None)
    clock = None if state is None else state.clock
    return clock if getattr(clock, "loops_patched", False) else None


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
    marker = item.stash.get(MARKER_SPEC, None)
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


def _adopt_fixtures(item: pytest.Item, state: TestState) -> None:
    """Use a suite's own ``clock`` and ``journal`` fixtures (overriding ours) if it has them."""
    funcargs: dict[str, object] = getattr(item, "funcargs", {})
    clock_module, journal_module = (
        sys.modules.get(f"pytest_resilience.core.{m}") for m in ("virtual_clock", "journal")
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
        and journal_module is not None
        and isinstance(theirs, journal_module.Journal)
    ):
        state._journal = theirs


def _injector(
    item: pytest.Item, settings: Settings, state: TestState, spec: Spec | None
) -> Injector:
    from faults.injector import Injector  # noqa: PLC0415

    clock, daemon, proxy = state.clock, daemon_target(item), state.proxy
    route: Route = "wire" if proxy is not None else "hooks"
    if settings.replay is not None:
        # the journal replaces the run-wide spec; a marker's sites replace the journal's
        return Injector.from_recording(
            settings.replay,
            clock=clock,
            journal=state.journal,
            daemon=daemon,
            proxy=proxy,
            route=route,
            overrides=item.stash.get(MARKER_SPEC, None),
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
    option that changes what the faults do (virtual time, the daemon's URL and route).
    A ``pytest_resilience_reproduce_command`` implementation may replace it."""
    settings = item.config.stash[SETTINGS]
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
    command = " ".join(parts)
    replaced = item.ihook.pytest_resilience_reproduce_command(item=item, command=command)
    return command if replaced is None else str(replaced)


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
