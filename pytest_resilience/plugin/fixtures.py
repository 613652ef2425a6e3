"""The implementations behind the plugin's fixtures (declared in :mod:`.fixture_decls`).

The plugin declares each fixture in a few lines and imports this module only when a test
asks for one, so that loading the plugin stays cheap; this module may import the core. It
reaches the plugin's state through :mod:`.state` and :mod:`.options` only, never through
the hooks, so that the imports inside the plugin point one way.

- ``clock``: a :class:`TestClock`, a :class:`~pytest_resilience.core.clock.VirtualClock` that
  runs the sync sleeps of tenacity, stamina, backoff and the openai client's retries on
  itself (:meth:`TestClock.patch_sleeps`; not under ``virtual_time(sleeps=False)`` or
  ``real_time``), and can also make the event loops the test creates run on it
  (:meth:`TestClock.patch_event_loops`) and wall-clock reads follow it
  (:meth:`TestClock.freeze_wall_time`, freezegun with ``real_asyncio=True``); all are
  undone at teardown. The ``virtual_time`` marker (or ``--virtual-time``) gives a test the
  fixture with its event loops on it: ``@pytest.mark.virtual_time(wall=True, sleeps=True)``.
- ``faults``: a :class:`FaultsFactory`; ``faults("llama.generate=2*none")`` installs an
  injector on the test's clock and journal and returns it; uninstalled at the end of the
  call phase, or at teardown, even when the test fails.
- ``leak_check``: a :class:`LeakCheck`; the test fails at teardown with the list of what
  leaked and where.
- ``llama``, ``daemon``, ``resilient_client``: backends on the tiny model.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import importlib.util
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import pytest

from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.leaks import ResourceRegistry, check, format_leaks, snapshot
from pytest_resilience.plugin.options import in_virtual_time, route_of
from pytest_resilience.plugin.state import SHARED_DAEMON, daemon_target, settings_of, state_of

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Iterator
    from pathlib import Path

    from faults.injector import Injector
    from faults.proxy import FaultProxy
    from faults.spec import Spec
    from faults.target import Server
    from pytest_resilience.backends.daemon import DaemonProcess
    from pytest_resilience.backends.llama import LlamaBackend
    from pytest_resilience.backends.resilient import ResilientClient
    from pytest_resilience.core.clock import Clock
    from pytest_resilience.core.journal import Journal
    from pytest_resilience.core.leaks import Leak, Snapshot

__all__ = ["SLEEP_SITES", "FaultsFactory", "LeakCheck", "TestClock"]

#: Where each library reads the time it sleeps and measures its limits with: (module,
#: attribute holding the ``time`` or ``datetime`` module), replaced while a test's clock
#: runs them. tenacity's ``time`` measures ``stop_after_delay`` (and stamina's ``timeout``,
#: built on it); its ``nap`` sleeps, for stamina's sync retries too; backoff measures
#: ``max_time`` with ``datetime.now()``. Without the limits on the clock, a 45 s limit would
#: never stop a virtual half hour of retries, and the test would see more attempts than
#: production makes.
SLEEP_SITES: dict[str, tuple[tuple[str, str], ...]] = {
    "tenacity": (("tenacity.nap", "time"), ("tenacity", "time")),
    "stamina": (("tenacity.nap", "time"), ("tenacity", "time")),
    "backoff": (
        ("backoff._sync", "time"),
        ("backoff._sync", "datetime"),
        ("backoff._async", "datetime"),
    ),
    "openai": (("openai._base_client", "time"),),  # the sync client's own retry backoff
}
# Under freezegun, these keep real time: our own modules (the virtual clock's bookkeeping
# and the leak check's grace period are real seconds by design), and the timing of pytest
# (--durations, the JUnit XML's times), pytest-xdist and pytest-timeout, which measure tests.
_FREEZE_IGNORE = (
    "pytest_resilience",
    "faults",
    "_pytest.timing",
    "xdist",
    "pytest_timeout",
)


class _TimeOnClock:
    """Stands in for the ``time`` module inside one library: ``sleep`` waits on the clock and
    ``monotonic`` reads it; every other attribute is the real module's."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self.monotonic = clock.now

    def sleep(self, seconds: float) -> None:
        self._clock.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class _DatetimeOnClock:
    """Stands in for the ``datetime`` module inside one library: ``datetime.now()`` moves with
    the clock (from the real now, when the patch began); every other attribute is the real
    module's."""

    def __init__(self, clock: VirtualClock) -> None:
        start, base = dt.datetime.now(), clock.now()

        class _Datetime(dt.datetime):
            @classmethod
            def now(cls, tz: dt.tzinfo | None = None) -> _Datetime:
                moved = start + dt.timedelta(seconds=clock.now() - base)
                real = moved if tz is None else moved.astimezone(tz)
                return cls.fromtimestamp(real.timestamp(), tz)

        self.datetime = _Datetime

    def __getattr__(self, name: str) -> Any:
        return getattr(dt, name)


class _WallFollowsClock:
    """A freezegun time factory: the frozen start plus the virtual time elapsed since."""

    def __init__(self, clock: VirtualClock, start: dt.datetime) -> None:
        self._clock, self._start, self._base = clock, start, clock.now()

    def __call__(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=self._clock.now() - self._base)


class TestClock(VirtualClock):
    """A :class:`VirtualClock` for one test, with three opt-in bridges for downstream code:
    libraries' sleeps (:meth:`patch_sleeps`), new event loops (:meth:`patch_event_loops`)
    and wall-clock reads (:meth:`freeze_wall_time`).

    All are undone by :meth:`close` (the fixture calls it at teardown).
    """

    __test__ = False  # not a test class, whatever pytest's naming rules say

    def __init__(self, start: float = 0.0, **options: float) -> None:
        super().__init__(start, **options)
        self._undo = ExitStack()
        self._frozen = False
        self._loops_patched = False
        #: how many event loops of this clock were made (by :meth:`new_event_loop`)
        self.loops_made = 0

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        self.loops_made += 1
        return super().new_event_loop()

    def patch_event_loops(self) -> None:
        """Make the event loops created from now on run on this clock: ``asyncio.run``,
        ``asyncio.Runner``, pytest-asyncio's function-scoped loop and anyio's asyncio
        backend (through the event loop policy). Raises ``RuntimeError`` if already done."""
        if self._loops_patched:
            raise RuntimeError("the event loops already run on this clock")
        from pytest_resilience.plugin.async_time import use_clock  # noqa: PLC0415

        self._undo.callback(use_clock(self))
        self._loops_patched = True

    @property
    def loops_patched(self) -> bool:
        """Whether new event loops run on this clock (:meth:`patch_event_loops`)."""
        return self._loops_patched

    def freeze_wall_time(self, start: dt.datetime | str = "2025-01-01T00:00:00") -> None:
        """Make ``time.time``, ``time.monotonic``, ``time.perf_counter``, ``datetime.now``
        and friends follow this clock from ``start`` (freezegun, with ``real_asyncio=True``
        so that asyncio keeps working). pytest's own timing (``--durations``, the JUnit
        XML's times), pytest-xdist's and pytest-timeout's keep real time. Costs a few
        milliseconds. Raises ``RuntimeError`` if already frozen, ``ImportError`` naming the
        ``wall`` extra if freezegun is not installed."""
        if self._frozen:
            raise RuntimeError("wall time already follows this clock")
        try:
            import freezegun  # noqa: PLC0415 - optional (the "wall" extra), and slow to import
            import freezegun.api  # noqa: PLC0415
        except ImportError as exc:
            extra = "pip install 'pytest-resilience[wall]'"
            raise ImportError(f"wall=True needs freezegun: {extra} ({exc})", name=exc.name) from exc

        freezer = freezegun.freeze_time(start, real_asyncio=True, ignore=list(_FREEZE_IGNORE))
        freezer.start()
        self._undo.callback(freezer.stop)
        # freezer.start() pushed a fixed-time factory: follow the clock instead.
        freezegun.api.freeze_factories[-1] = _WallFollowsClock(self, freezer.time_to_freeze)  # type: ignore[call-overload]
        self._frozen = True

    def patch_sleeps(self, *libraries: str) -> list[str]:
        """Run the sync sleeps of ``libraries`` (default: those of tenacity, stamina, backoff
        and openai that are installed), and the clocks their time limits are measured with,
        on this clock; returns the libraries patched. Raises
        ``ValueError`` for a library it does not know, ``ModuleNotFoundError`` for a named
        one that is not installed."""
        unknown = sorted(set(libraries) - set(SLEEP_SITES))
        if unknown:
            raise ValueError(f"cannot patch the sleeps of {unknown}; known: {sorted(SLEEP_SITES)}")
        names = list(libraries) or [
            n for n in SLEEP_SITES if importlib.util.find_spec(n.partition(".")[0]) is not None
        ]
        done: set[tuple[str, str]] = set()
        for where in (site for name in names for site in SLEEP_SITES[name]):
            if where in done:
                continue
            module = importlib.import_module(where[0])
            original = getattr(module, where[1])
            stand_in = _DatetimeOnClock(self) if where[1] == "datetime" else _TimeOnClock(self)
            setattr(module, where[1], stand_in)
            self._undo.callback(setattr, module, where[1], original)
            done.add(where)
        return names

    def close(self) -> None:
        """Undo :meth:`freeze_wall_time`, :meth:`patch_sleeps` and :meth:`patch_event_loops`,
        last first. Idempotent."""
        self._frozen = self._loops_patched = False
        self._undo.close()


def clock_fixture(request: pytest.FixtureRequest) -> Iterator[TestClock]:
    clock = TestClock()
    # the closer of virtual_time and real_time decides; under --virtual-time, a test runs as
    # if marked virtual_time with its defaults
    marker = next(
        (m for m in request.node.iter_markers() if m.name in ("virtual_time", "real_time")), None
    )
    options = marker.kwargs if marker is not None and marker.name == "virtual_time" else {}
    try:
        virtual = in_virtual_time(request.node, settings_of(request.config))
        if virtual:
            from pytest_resilience.plugin.async_time import refuse_uncovered  # noqa: PLC0415

            refuse_uncovered(request)
        real_time = marker is not None and marker.name == "real_time"
        if options.get("sleeps", True) and not real_time:
            clock.patch_sleeps()
        if virtual:
            clock.patch_event_loops()
            if options.get("wall", False):
                start = options.get("start")
                clock.freeze_wall_time(*(() if start is None else (start,)))
        state = state_of(request.node)
        state.clock, state.clock_start = clock, clock.now()
        yield clock
    finally:
        clock.close()


# ----------------------------------------------------------------------- faults


class FaultsFactory:
    """``faults(spec, ...)``: install an :class:`~faults.Injector` for the rest of the test.

    Defaults: the run's seed, the test's node id as scope, the test's ``clock`` (when it
    uses one, else real time) and ``journal``, and as ``daemon`` the test's daemon (its
    ``daemon`` fixture, the session's daemon, or ``--daemon-url``; ``daemon=None`` for
    none); on the wire route, the fault proxy in front of the test's daemon, and the faults
    act on the wire. Returns the installed injector. Raises ``SpecError`` for a malformed
    spec.
    """

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._item = request.node
        self._seed = settings_of(request.config).seed

    _DEFAULT: Any = object()

    def __call__(
        self,
        spec: str | Spec,
        *,
        seed: int | str | None = None,
        scope: str | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
        daemon: Server | str | None = _DEFAULT,
        proxy: FaultProxy | None = _DEFAULT,
    ) -> Injector:
        from faults.injector import Injector  # noqa: PLC0415

        state = state_of(self._item)
        if daemon is self._DEFAULT:
            daemon = daemon_target(self._item)
        if proxy is self._DEFAULT:
            proxy = state.proxy if daemon is state.daemon else None
        injector = Injector(
            spec,
            seed=self._seed if seed is None else seed,
            scope=self._item.nodeid if scope is None else scope,
            clock=clock if clock is not None else state.clock,
            journal=journal if journal is not None else state.journal,
            daemon=daemon,
            proxy=proxy,
            route="wire" if proxy is not None and proxy is state.proxy else "hooks",
        )
        injector.install()
        state.installed.append(injector)
        return injector


def faults_fixture(request: pytest.FixtureRequest) -> Iterator[FaultsFactory]:
    try:
        yield FaultsFactory(request)
    finally:
        state_of(request.node).uninstall()


# ----------------------------------------------------------------------- leaks


class LeakCheck:
    """What a test had before it ran; :meth:`leaks` compares now.

    ``registry`` is the process-wide :func:`~pytest_resilience.core.leaks.default_registry`: the
    backends register their models and streams there by themselves, and a test may register
    its own closeable resources. From creation to :meth:`close`, a
    :func:`~pytest_resilience.core.leaks.watch` records where threads, processes, descriptors
    and asyncio tasks are created, so that each leak names its creation site.
    """

    #: the leaks already reported for a test, so that nested checks report each once
    REPORTED: pytest.StashKey[list[Leak]] = pytest.StashKey()

    def __init__(self, grace: float = 0.5) -> None:
        from pytest_resilience.core.leaks import default_registry, watch  # noqa: PLC0415

        self.registry: ResourceRegistry = default_registry()
        self.grace = grace
        self._watch = watch()
        self.before: Snapshot = snapshot(registry=self.registry)

    def leaks(self) -> list[Leak]:
        """What is alive now and was not before (after the grace period)."""
        return check(self.before, registry=self.registry, grace=self.grace)

    def close(self) -> None:
        """Stop recording creation sites. Idempotent."""
        self._watch.close()

    def __enter__(self) -> LeakCheck:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def leak_check_fixture(request: pytest.FixtureRequest) -> Iterator[LeakCheck]:
    checker = LeakCheck()
    with checker:
        yield checker
        shared = request.config.stash.get(SHARED_DAEMON, None)
        if shared is not None and shared.pid is not None and checker.before.processes is not None:
            # The session's daemon outlives every test by design, also when this test
            # restarted it (a new pid).
            processes = {**checker.before.processes, shared.pid: "the session's daemon"}
            checker.before = dataclasses.replace(checker.before, processes=processes)
        leaks = checker.leaks()
    # Each leak is reported once: the leak_check fixture and the autouse check may both run
    # around a test, and a test may run another pytest in process (pytester).
    reported = request.node.stash.get(LeakCheck.REPORTED, [])
    leaks = [leak for leak in leaks if leak not in reported]
    request.node.stash[LeakCheck.REPORTED] = reported + leaks
    checker.registry.dismiss(leaks)
    if leaks:
        state_of(request.node).leaks += len(leaks)
        pytest.fail(format_leaks(leaks), pytrace=False)


# ----------------------------------------------------------------------- backends


def llama_fixture(model: Path) -> Iterator[LlamaBackend]:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from pytest_resilience.backends.llama import LlamaBackend  # noqa: PLC0415

    backend = LlamaBackend(model, n_threads=1, name="tiny")
    try:
        yield backend
    finally:
        backend.close()


def daemon_process_fixture(request: pytest.FixtureRequest, model: Path) -> Iterator[DaemonProcess]:
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
    from pytest_resilience.backends.daemon import DaemonProcess  # noqa: PLC0415

    # a daemon of the test's own records into the test's journal from its start to its stop
    journal = state_of(request.node).journal if request.scope == "function" else None
    process = DaemonProcess(model, journal=journal)
    try:
        process.start()
        if request.scope == "session":
            request.config.stash[SHARED_DAEMON] = process
        yield process
    finally:
        if request.config.stash.get(SHARED_DAEMON, None) is process:
            del request.config.stash[SHARED_DAEMON]
        process.close()


def revive(process: DaemonProcess) -> None:
    """Get a shared daemon running again after a test killed or paused it."""
    if process.paused:
        process.resume()
    if not process.alive:
        process.restart()


def daemon_fixture(
    request: pytest.FixtureRequest, process: DaemonProcess
) -> Iterator[DaemonProcess]:
    state = state_of(request.node)
    process.journal = state.journal
    state.daemon = process
    with ExitStack() as undo:
        if route_of(request.node) == "wire":
            from faults.proxy import FaultProxy  # noqa: PLC0415

            assert process.port is not None  # started by the process fixture
            state.proxy = undo.enter_context(FaultProxy(upstream=(process.host, process.port)))
            process.front = state.proxy.url
            undo.callback(setattr, process, "front", None)
        try:
            yield process
        finally:
            if request.config.stash.get(SHARED_DAEMON, None) is process:
                process.journal = None  # the next test's, from its start


def resilient_fixture(
    request: pytest.FixtureRequest, process: DaemonProcess, model: Path
) -> Iterator[ResilientClient]:
    from pytest_resilience.backends.daemon import DaemonBackend  # noqa: PLC0415
    from pytest_resilience.backends.llama import LlamaBackend  # noqa: PLC0415
    from pytest_resilience.backends.resilient import ResilientClient  # noqa: PLC0415

    state = state_of(request.node)
    backend = DaemonBackend(process.base_url, model=process.alias)
    client = ResilientClient(
        backend,
        lambda: LlamaBackend(model, n_threads=1, name="direct"),
        process=process,
        journal=state.journal,
    )
    try:
        yield client
    finally:
        client.close()
        backend.close()
