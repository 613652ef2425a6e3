"""The fault injector: install a spec's sites, decide every call, inject, record, restore.

::

    with faults.inject("llama.generate=2*none", seed=7, clock=clock, journal=journal) as run:
        ...                                   # the first two completions return None
    run.calls("llama.generate"), run.injected("llama.generate")   # e.g. (5, 2)

An :class:`Injector` parses its spec (``SpecError`` propagates), builds one
:class:`~faults.schedule.Schedule` per site from ``(seed, scope, site)``, and on
``install()`` patches the sites (:mod:`faults.sites`). Each call of a site asks its schedule;
a fault that fires is written to the journal as ``FaultInjected(site, fault, call)`` and
applied. ``uninstall()`` restores every patched attribute to the exact original object; the
context manager does it also when the body raises.

Injections nest: an inner one patches on top of an outer one, and they must unwind in
reverse order (LIFO); uninstalling out of order raises ``RuntimeError`` and changes nothing.
The stack of installed injectors is the one process-wide state here, because the patches
themselves are process-wide; it is guarded by a lock.

A run can be saved (:meth:`Injector.save`, :mod:`faults.journal`) and replayed
(:meth:`Injector.replay`): the same faults at the same call numbers of the same sites,
whatever the seed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from faults.journal import Recording, dump, load, save
from faults.parser import parse
from faults.schedule import derive_rng
from faults.schedule import schedules as build_schedules
from faults.sites import Env, install
from faults.spec import Site, Spec
from faults.target import Target
from pytest_resilience.core.clock import SystemClock
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Mapping
    from types import TracebackType
    from typing import IO

    from faults.proxy import FaultProxy
    from faults.schedule import Decision, Schedule
    from faults.sites import Installed
    from faults.sites.base import Route
    from faults.sites.daemon import DaemonSites
    from faults.target import Server
    from pytest_resilience.core.clock import Clock

__all__ = ["FaultNotReached", "Injector", "Unreached", "inject", "installed"]

_stack: list[Injector] = []  # installed injectors, innermost last
_stack_lock = threading.Lock()


def installed() -> list[Injector]:
    """The injectors installed now in this process, innermost last."""
    with _stack_lock:
        return list(_stack)


class Injector:
    """Faults from ``spec`` (text or a parsed :class:`Spec`), decided by seeded schedules.

    ``seed`` and ``scope`` seed each site's generator (probabilistic terms, latency
    jitter). ``clock`` paces hangs and latency and stamps events (default: the system
    clock). ``journal`` receives the ``FaultInjected`` events (default: a journal of the
    injector's own, :attr:`journal`). ``daemon`` is the server the daemon.* sites act on: a
    ``DaemonProcess``, a :class:`~faults.target.Target`, or the base URL of a server of the
    app's own; ``proxy`` a running ``FaultProxy`` in front of it. ``route`` says how the
    daemon.* faults reach the traffic: ``"hooks"`` in this process's HTTP clients (waits on
    ``clock``), or ``"wire"``: the proxy applies them to whatever connects to it (any
    client, any process; real time). Only traffic to their
    addresses is faulted; with neither, the daemon.* sites fault nothing and
    :meth:`unreached` says so. Raises ``SpecError`` for a malformed spec, ``ValueError``
    for a ``daemon`` URL without scheme or host.
    """

    def __init__(
        self,
        spec: str | Spec,
        *,
        seed: int | str = 0,
        scope: str = "",
        clock: Clock | None = None,
        journal: Journal | None = None,
        daemon: Server | str | None = None,
        proxy: FaultProxy | None = None,
        route: Route = "hooks",
    ) -> None:
        if route == "wire" and proxy is None:
            raise ValueError("route='wire' needs the fault proxy in front of the daemon: proxy=")
        self.spec = parse(spec) if isinstance(spec, str) else spec
        self.seed = seed
        self.scope = scope
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.journal = journal if journal is not None else Journal()
        self.daemon: Server | None = Target(daemon) if isinstance(daemon, str) else daemon
        self.proxy = proxy
        self._schedules: dict[Site, Schedule] = dict(
            build_schedules(self.spec, seed=seed, scope=scope)
        )
        self.route: Route = route
        self._env = Env(self.clock, self.journal, seed, scope, self.daemon, proxy, route)
        self._installed: Installed | None = None
        self._daemon_sites: DaemonSites | None = None

    # ------------------------------------------------------------------ replay

    @classmethod
    def replay(
        cls,
        source: str | os.PathLike[str] | Iterable[str],
        *,
        seed: int | str | None = None,
        scope: str | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
        daemon: Server | str | None = None,
        proxy: FaultProxy | None = None,
        route: Route = "hooks",
    ) -> Injector:
        """An injector that fires exactly the faults of a saved run (a path or its lines).

        ``seed`` and ``scope`` default to the recorded ones; they no longer decide which
        calls fail, only latency jitter. Raises ``JournalFileError`` for a bad file.
        """
        recording = load(source)
        return cls.from_recording(
            recording,
            seed=seed,
            scope=scope,
            clock=clock,
            journal=journal,
            daemon=daemon,
            proxy=proxy,
            route=route,
        )

    @classmethod
    def from_recording(
        cls,
        recording: Recording,
        *,
        seed: int | str | None = None,
        scope: str | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
        daemon: Server | str | None = None,
        proxy: FaultProxy | None = None,
        route: Route = "hooks",
        overrides: Spec | None = None,
    ) -> Injector:
        """:meth:`replay` from a :class:`~faults.journal.Recording` already read.

        ``overrides`` replaces the recording's faults at the sites it names (a test's
        ``faults`` marker does so under ``--replay-journal``); its sites are decided afresh.
        """
        spec = recording.spec if overrides is None else recording.spec.merged(overrides)
        injector = cls(
            spec,
            seed=recording.seed if seed is None else seed,
            scope=recording.scope if scope is None else scope,
            clock=clock,
            journal=journal,
            daemon=daemon,
            proxy=proxy,
            route=route,
        )
        replayed = recording.schedules()
        kept = set() if overrides is None else {e.site for e in overrides.entries}
        injector._schedules.update({k: v for k, v in replayed.items() if k not in kept})
        return injector

    # ------------------------------------------------------------------ install

    @property
    def installed(self) -> bool:
        return self._installed is not None

    def install(self) -> Self:
        """Patch every site. Raises ``RuntimeError`` if already installed, ``SpecError`` for
        a site that cannot be installed (then nothing stays patched)."""
        with _stack_lock:
            if self._installed is not None:
                raise RuntimeError(f"{self!r} is already installed")
            self._installed = install(self.spec, self._schedules, self._env)
            self._daemon_sites = self._installed.daemon
            _stack.append(self)
        return self

    def uninstall(self) -> None:
        """Restore every patched attribute. Raises ``RuntimeError`` if not installed, or if
        an injection installed after this one is still installed (unwind innermost first)."""
        with _stack_lock:
            if self._installed is None:
                raise RuntimeError(f"{self!r} is not installed")
            if _stack[-1] is not self:
                above = ", ".join(repr(i) for i in _stack[_stack.index(self) + 1 :])
                raise RuntimeError(
                    f"injections unwind in reverse order: uninstall {above} before {self!r}"
                )
            restorers, self._installed = self._installed, None
            _stack.pop()
            for restorer in reversed(restorers):
                restorer.restore()

    def __enter__(self) -> Self:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    # ------------------------------------------------------------------ results

    def schedule(self, site: str | Site) -> Schedule:
        """The schedule of ``site``; ``KeyError`` naming the spec's sites if it has none."""
        key = Site.parse(site) if isinstance(site, str) else site
        try:
            return self._schedules[key]
        except KeyError:
            known = ", ".join(map(str, self._schedules)) or "none"
            raise KeyError(f"{key} is not a site of this injection (its sites: {known})") from None

    def calls(self, site: str | Site) -> int:
        """How many calls of ``site`` were seen (faulted or not)."""
        return self.schedule(site).calls

    def injected(self, site: str | Site) -> int:
        """How many faults were injected at ``site``."""
        return self.schedule(site).fired

    @property
    def decisions(self) -> list[tuple[str, Decision]]:
        """Every fault injected, in order: (site, decision)."""
        return list(self._env.decisions)

    @property
    def schedules(self) -> Mapping[Site, Schedule]:
        return dict(self._schedules)

    def restart(self) -> None:
        """Start every site's schedule afresh (a new example of a property test meets the
        same faults as the first); the counts of :meth:`calls` and :meth:`injected` go on.
        A replayed injector replays again from call 1."""
        for site, schedule in self._schedules.items():
            needs_rng = any(t.pct is not None for t in schedule.chain)
            rng = derive_rng(self.seed, self.scope, site) if needs_rng else None
            schedule.restart(rng)

    def unreached(self) -> list[Unreached]:
        """The sites whose faults were asked for without chance and never fired, each with
        the likely reason. A term without ``pct%`` is a request that must be met: when none
        of a site's terms fired, the test proved nothing about that fault."""
        found: list[Unreached] = []
        for entry in self.spec.entries:
            schedule = self._schedules[entry.site]
            certain = [t for t in entry.chain if t.kind != "off" and t.pct is None]
            if not certain or schedule.fired:
                continue
            found.append(Unreached(str(entry.site), self.reason(entry.site)))
        return found

    def reason(self, site: str | Site) -> str:
        """Why the faults of ``site`` did not fire (so far): never called, called too few
        times, or, for a daemon.* site, where its requests went instead."""
        site = Site.parse(site) if isinstance(site, str) else site
        schedule = self.schedule(site)
        calls = schedule.calls
        terms = [t for e in self.spec.entries if e.site == site for t in e.chain]
        if calls:
            first = min((t.at for t in terms if t.at is not None), default=None)
            need = f"; its fault waits for call {first}" if first is not None else ""
            return f"{site} was called {calls} time(s) but no fault fired{need}"
        if site.family != "daemon":
            return f"{site} was never called"
        sites = self._daemon_sites
        if self.route == "wire" and self.proxy is not None:
            what = "streamed (text/event-stream) answer" if site.target == "stream" else "request"
            return (
                f"{site}: no {what} went through the fault proxy at {self.proxy.url}; on the "
                "wire route the client must send to the proxy (daemon.base_url)"
            )
        if self.daemon is None and self.proxy is None:
            return (
                f"{site} has no daemon to act on: pass daemon= (a DaemonProcess, a Target "
                "or a base URL), use the `daemon` fixture, or set resilience_daemon_url"
            )
        where = ", ".join(f"{host}:{port}" for host, port in sites.addresses()) if sites else "?"
        if sites is not None and sites.elsewhere:
            others = ", ".join(f"{a} x{n}" for a, n in sites.elsewhere.most_common(3))
            return f"{site}: requests went to other servers ({others}), not to {where}"
        if site.target == "stream":
            return f"{site}: no streamed (text/event-stream) answer from {where} was read"
        hooked = ", ".join(sites.clients) if sites else "none"
        missing = sites.unhooked.items() if sites else ()
        unhooked = "".join(f"; {p} is not hooked: {why}" for p, why in missing)
        return (
            f"{site}: no hooked client ({hooked}) sent a request to {where}{unhooked}; a "
            "client that is not hooked needs the wire route (--daemon-route wire)"
        )

    def dump(self, stream: IO[str]) -> None:
        """Write the journal, with a header naming this spec and seed (:mod:`faults.journal`)."""
        dump(self.journal, stream, spec=self.spec, seed=self.seed, scope=self.scope)

    def save(self, path: str | os.PathLike[str]) -> None:
        """:meth:`dump` to a file, for :meth:`replay`."""
        save(self.journal, path, spec=self.spec, seed=self.seed, scope=self.scope)

    def __repr__(self) -> str:
        state = "installed" if self.installed else "not installed"
        return f"<Injector {str(self.spec)!r} seed={self.seed!r} {state}>"


class FaultNotReached(UserWarning):
    """A fault that a test asked for never fired: the test passed without meeting it, so it
    proves nothing about that failure. The message names the site and the likely reason."""


@dataclass(frozen=True, slots=True)
class Unreached:
    """A site whose requested fault never fired, and the likely reason."""

    site: str
    reason: str

    def __str__(self) -> str:
        return self.reason


def inject(
    spec: str | Spec,
    *,
    seed: int | str = 0,
    scope: str = "",
    clock: Clock | None = None,
    journal: Journal | None = None,
    daemon: Server | str | None = None,
    proxy: FaultProxy | None = None,
    route: Route = "hooks",
) -> Injector:
    """An :class:`Injector` to use with ``with`` (``with inject(...) as run:``)."""
    return Injector(
        spec,
        seed=seed,
        scope=scope,
        clock=clock,
        journal=journal,
        daemon=daemon,
        proxy=proxy,
        route=route,
    )
