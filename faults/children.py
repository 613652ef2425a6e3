"""Faults that reach the processes an app starts: one schedule for a whole process family.

An app that isolates its model in a worker process calls llama-cpp-python there, not in the
test's process. While :func:`share` is in force for an injector, its ``llama.*`` and
``py:`` sites reach every Python process of the family:

- a forked child (``os.fork``, multiprocessing's ``fork`` start method) inherits the
  installed injector, patches and all;
- a spawned one (multiprocessing's ``spawn`` and ``forkserver``, ``subprocess`` running
  Python) finds the family in the environment variable :data:`ENV` and installs the same
  sites at startup: ``pytest_resilience_children.pth``, which the package installs into
  site-packages (an editable install too), calls :func:`bootstrap` when the variable is
  set, and costs one dictionary lookup when it is not. Each site is installed when its
  module is first imported (``llama_cpp``, a ``py:`` site's module), so a child that
  never imports it pays nothing.

Counts are per family, not per process: every process decides through the same state (a
small file under an exclusive lock), so ``llama.generate=1*crash`` fails the first call in
any process of the family, and a worker started again after that crash passes. Each
process keeps its own copy of a site's :class:`~faults.schedule.Schedule` and first
replays the calls the others made, so ``pct%`` draws, counts and ``@n`` follow the
documented rules across processes as they do in one. A fault that fired in another
process is written to the injector's journal when :meth:`Family.close` runs (the end of
the test's call phase), and counts in ``injector.calls()``, ``injected()`` and
``unreached()`` at once.

In a spawned child, waits (``timeout``, ``latency``, ``stall``) are real time and its
journal is its own; the daemon.* sites are not installed there: a child's traffic meets
daemon faults on the wire route (the fault proxy). A process still running after the
family closed passes every call through.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Any, Final

from faults.schedule import Decision, Schedule, derive_rng
from faults.sites.base import SOURCE
from pytest_resilience.core.events import FaultInjected

if TYPE_CHECKING:
    import importlib.machinery
    import random
    import types
    from collections.abc import Sequence

    from faults.injector import Injector
    from faults.spec import Entry, Spec, Term

__all__ = ["ENV", "Family", "bootstrap", "remove_leftovers", "share"]

#: The environment variable that carries a family to the Python processes an app starts.
ENV: Final = "PYTEST_RESILIENCE_CHILD_FAULTS"
#: The site families that reach children (daemon.* act on this process's HTTP clients).
_FAMILIES: Final = ("llama", "py")
#: How the folder of a family's shared state is named, then its owner's pid.
_PREFIX: Final = "pytest-resilience-family-"


class _Shared:
    """The state the processes of a family share: per site ``[calls, fired, position,
    epoch]`` in a JSON file, and the faults fired outside the owner, one JSON line each."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.state = os.path.join(folder, "state.json")
        self.fired = os.path.join(folder, "fired.jsonl")
        self._pid = -1
        self._fd = -1
        self._lock = threading.Lock()

    def _open(self) -> int:
        """This process's own descriptor: a forked child must not share the lock's open
        file description with its parent, so it opens the file again."""
        pid = os.getpid()
        if pid != self._pid:
            self._lock = threading.Lock()  # a copy held at the fork is never released
            self._fd = os.open(self.state, os.O_RDWR | os.O_CLOEXEC)
            self._pid = pid
        return self._fd

    @contextlib.contextmanager
    def locked(self) -> Any:
        fd = self._open()
        with self._lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield fd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @staticmethod
    def read(fd: int) -> dict[str, list[int]]:
        data = os.pread(fd, 1 << 20, 0)
        return json.loads(data) if data else {}

    @staticmethod
    def write(fd: int, state: dict[str, list[int]]) -> None:
        data = json.dumps(state).encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def close(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = -1, -1


class SharedSchedule:
    """A site's schedule as the family sees it: :meth:`decide` counts the call for the
    whole family and answers as a single schedule would; :attr:`calls` and :attr:`fired`
    are the family's. Stands in for the :class:`Schedule` it wraps."""

    __slots__ = ("_epoch", "_final", "_seen", "chain", "family", "inner", "site")

    def __init__(self, inner: Schedule, site: str, family: _Family) -> None:
        self.inner, self.site, self.family, self.chain = inner, site, family, inner.chain
        self._seen = 0  # decisions this process's copy made since its last restart
        self._epoch = 0  # the family's restarts this copy followed
        self._final: list[int] | None = None  # the family's counts when it closed

    def decide(self) -> Decision | None:
        try:
            return self.family.decide(self)
        except OSError:  # the family is gone (closed): the process outlived the test
            return None

    def _counts(self) -> list[int]:
        if self._final is not None:
            return self._final
        try:
            with self.family.shared.locked() as fd:
                return _Shared.read(fd).get(self.site, [0, 0, 0, 0])
        except OSError:
            return [self.inner.calls, self.inner.fired, 0, 0]

    @property
    def calls(self) -> int:
        return self._counts()[0]

    @property
    def fired(self) -> int:
        return self._counts()[1]

    @property
    def spent(self) -> bool:
        return self.inner.spent

    def restart(self, rng: random.Random | None = None) -> None:
        """Start the chain afresh for the whole family (the counts go on)."""
        with self.family.shared.locked() as fd:
            state = _Shared.read(fd)
            calls, fired, _, epoch = state.get(self.site, [0, 0, 0, 0])
            state[self.site] = [calls, fired, 0, epoch + 1]
            _Shared.write(fd, state)
        self.inner.restart(rng)
        self._seen, self._epoch = 0, epoch + 1

    def __repr__(self) -> str:
        return f"<SharedSchedule {self.site} of {self.family.shared.folder}>"


class _Family:
    """What the processes of a family know of it: the shared state, its owner, the seed."""

    def __init__(self, folder: str, owner: int, seed: int | str, scope: str) -> None:
        self.shared = _Shared(folder)
        self.owner, self.seed, self.scope = owner, seed, scope

    def decide(self, schedule: SharedSchedule) -> Decision | None:
        site, inner = schedule.site, schedule.inner
        with self.shared.locked() as fd:
            state = _Shared.read(fd)
            calls, fired, position, epoch = state.get(site, [0, 0, 0, 0])
            if epoch != schedule._epoch:
                inner.restart(self._rng(inner))
                schedule._seen, schedule._epoch = 0, epoch
            while schedule._seen < position:  # the calls the other processes made
                inner.decide()
                schedule._seen += 1
            decision = inner.decide()
            schedule._seen += 1
            fired += decision is not None
            state[site] = [calls + 1, fired, position + 1, epoch]
            _Shared.write(fd, state)
            if decision is not None and os.getpid() != self.owner:
                line = {"site": site, "term": str(decision.term), "call": decision.call}
                with open(self.shared.fired, "a", encoding="utf-8") as out:
                    out.write(json.dumps(line) + "\n")
        return decision

    def _rng(self, inner: Schedule) -> random.Random | None:
        needs = any(t.pct is not None for t in inner.chain)
        return derive_rng(self.seed, self.scope, inner.site) if needs else None


class Family:
    """The process family of one injector (made by :func:`share`, before it is installed).

    While open, :data:`ENV` describes it to the processes the app spawns; :meth:`close`
    restores the environment, writes the faults fired in other processes to the
    injector's journal, and removes the shared state.
    """

    def __init__(self, injector: Injector, entries: Sequence[Entry]) -> None:
        if injector.installed:
            raise RuntimeError(f"share() needs {injector!r} before it is installed")
        self.injector = injector
        self.folder = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
        with open(os.path.join(self.folder, "state.json"), "w", encoding="utf-8"):
            pass
        self._family = _Family(self.folder, os.getpid(), injector.seed, injector.scope)
        schedules = injector._schedules  # wrapped before install, in the same package
        sites: dict[str, str] = {}
        self._shared: list[SharedSchedule] = []
        self._journaled = 0  # the lines of the fired file already in the journal
        for entry in entries:
            inner = schedules[entry.site]
            shared = SharedSchedule(inner, str(entry.site), self._family)
            schedules[entry.site] = shared  # type: ignore[assignment]
            self._shared.append(shared)
            sites[str(entry.site)] = "->".join(map(str, inner.chain))
        self.value = json.dumps(
            {
                "folder": self.folder,
                "owner": self._family.owner,
                "seed": injector.seed,
                "scope": injector.scope,
                "sites": sites,
            }
        )
        self._previous = os.environ.get(ENV)
        os.environ[ENV] = self.value

    def close(self) -> None:
        """Restore the environment, journal the other processes' faults, remove the state.
        Safe to call twice; a forked child's call does nothing."""
        if os.getpid() != self._family.owner or not os.path.isdir(self.folder):
            return
        if os.environ.get(ENV) == self.value:
            if self._previous is None:
                del os.environ[ENV]
            else:
                os.environ[ENV] = self._previous
        try:
            for shared in self._shared:  # the family's counts stay readable afterwards
                shared._final = shared._counts()
            self._journal_elsewhere()
        finally:
            self._family.shared.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    def collect(self) -> None:
        """Write the faults fired in other processes so far to the injector's journal, as
        :meth:`close` does at the end: whoever reads the journal before the family closes
        (the verdicts, as the call phase ends) sees them too. Each is written once."""
        if os.getpid() == self._family.owner and os.path.isdir(self.folder):
            self._journal_elsewhere()

    def _journal_elsewhere(self) -> None:
        from faults.parser import parse  # noqa: PLC0415

        try:
            with open(self._family.shared.fired, encoding="utf-8") as lines:
                fired = [json.loads(line) for line in lines if line.strip()]
        except FileNotFoundError:
            return
        fired, self._journaled = fired[self._journaled :], len(fired)
        injector = self.injector
        for item in fired:
            term = parse(f"{item['site']}={item['term']}").entries[0].chain[0]
            event = FaultInjected(
                time=injector.clock.now(),
                source=SOURCE,
                site=item["site"],
                fault=term.action,
                call=int(item["call"]),
            )
            injector.journal.append(event)

    def __enter__(self) -> Family:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_leftovers(owner: int) -> None:
    """Remove the shared state of the families of ``owner``, a process that died (crashed)
    before it could close them."""
    prefix = f"{_PREFIX}{owner}-"
    with contextlib.suppress(OSError):
        for name in os.listdir(tempfile.gettempdir()):
            if name.startswith(prefix):
                shutil.rmtree(os.path.join(tempfile.gettempdir(), name), ignore_errors=True)


def share(injector: Injector) -> Family | None:
    """Share ``injector``'s ``llama.*`` and ``py:`` sites with the processes started while
    the returned :class:`Family` is open (call before ``install()``; ``close()`` when the
    injector is uninstalled). None when the spec has no such site, or on a system without
    ``fcntl``."""
    entries = [e for e in injector.spec.entries if e.site.family in _FAMILIES]
    if not entries or not hasattr(os, "fork"):
        return None
    return Family(injector, entries)


# ------------------------------------------------------------------------- in a child


def bootstrap() -> None:
    """Install the family's faults in this process, a child started with :data:`ENV` set
    (the ``.pth`` file calls this at startup). Each site is installed when its module is
    imported; a malformed value is reported on stderr and ignored."""
    try:
        family = json.loads(os.environ[ENV])
        spec_text = ";".join(f"{site}={chain}" for site, chain in family["sites"].items())
        _Child(family, spec_text).start()
    except Exception as exc:  # noqa: BLE001 - never stop the child from starting
        sys.stderr.write(f"pytest-resilience: cannot install the faults of {ENV}: {exc!r}\n")


class _Child:
    """A spawned child's injection: the sites grouped by the module that must be imported
    first, each group installed once that module is."""

    def __init__(self, family: dict[str, Any], spec_text: str) -> None:
        from faults.parser import parse  # noqa: PLC0415

        self.spec: Spec = parse(spec_text)
        self.family = _Family(
            family["folder"], int(family["owner"]), family["seed"], family["scope"]
        )
        self.pending: dict[str, list[Entry]] = {}
        for entry in self.spec.entries:
            module = "llama_cpp" if entry.site.family == "llama" else entry.site.module
            self.pending.setdefault(module, []).append(entry)

    def start(self) -> None:
        for module in list(self.pending):
            if module in sys.modules:
                self.install(module)
        if self.pending:
            sys.meta_path.insert(0, _Watch(self))

    def install(self, module: str) -> None:
        from faults.sites import Env, install  # noqa: PLC0415
        from pytest_resilience.core.clock import SystemClock  # noqa: PLC0415
        from pytest_resilience.core.journal import Journal  # noqa: PLC0415

        entries = self.pending.pop(module, [])
        family = self.family
        schedules: dict[Any, Any] = {}
        for entry in entries:
            site = str(entry.site)
            inner = Schedule(entry.chain, rng=_child_rng(family, entry.chain, site), site=site)
            schedules[entry.site] = SharedSchedule(inner, str(entry.site), family)
        env = Env(SystemClock(), Journal(maxlen=1000), family.seed, family.scope)
        install(entries, schedules, env)


def _child_rng(family: _Family, chain: Sequence[Term], site: str) -> random.Random | None:
    needs = any(t.pct is not None for t in chain)
    return derive_rng(family.seed, family.scope, site) if needs else None


class _Watch:
    """A meta path finder that installs a group of sites right after its module loads."""

    def __init__(self, child: _Child) -> None:
        self.child = child

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in self.child.pending:
            return None
        import importlib.util  # noqa: PLC0415

        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        loader = spec.loader if spec is not None else None
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        child, run = self.child, loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            run(module)
            child.install(name)
            if not child.pending:
                with contextlib.suppress(ValueError):
                    sys.meta_path.remove(self)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
