"""The leak check: what a piece of work left behind that was not there before.

::

    before = snapshot(registry=registry)
    run_the_test()
    leaks = check(before, registry=registry)      # re-snapshots, with a short grace period
    if leaks:
        raise AssertionError(format_leaks(leaks))

A :class:`Snapshot` records live Python threads, open file descriptors (with what they point
to), child processes, the unfinished asyncio tasks of a given loop, and the open resources
of a :class:`ResourceRegistry`. :func:`diff` is a pure comparison of two snapshots into
:class:`Leak` records; :func:`check` takes the second snapshot itself and, when it finds
leaks, allows a short *real-time* grace period (default 0.5 s) for things that are already
ending: it joins the new threads and polls again. The grace is real time on purpose: a
finishing thread or a child being reaped does not follow a virtual clock. It costs nothing
when nothing leaked.

How each kind is seen, cheapest first; a kind that cannot be seen is skipped (``None`` in
the snapshot), never guessed:

- threads: ``threading.enumerate()``, excluding dummy threads (native threads that merely
  called into Python, e.g. llama.cpp's log callback: Python cannot see them end);
- file descriptors: ``/proc/self/fd`` with ``readlink`` (Linux), else psutil's
  ``open_files()`` (regular files only), imported only then;
- child processes: ``/proc/self/task/*/children``, else psutil, imported only then;
- asyncio tasks: ``asyncio.all_tasks(loop)`` for the loop passed in.

File descriptors are compared by number *and* target, so a number reused for another file
counts as a new descriptor.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .clock import SystemClock

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "Leak",
    "ResourceRegistry",
    "Snapshot",
    "check",
    "diff",
    "format_leaks",
    "snapshot",
]

R = TypeVar("R")

#: The grace period is real time by design (see the module docstring).
_REAL_TIME = SystemClock()
_POLL = 0.01


@dataclass(frozen=True, slots=True)
class Leak:
    """One thing left behind: ``what`` kind, a ``detail`` and, when known, ``where`` it began."""

    what: str  # thread | fd | process | task | the resource kind given to the registry
    detail: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}" + (f" (created at {self.where})" if self.where else "")


def format_leaks(leaks: list[Leak]) -> str:
    """A readable list of leaks, one a line, for a test failure."""
    noun = "thing" if len(leaks) == 1 else "things"
    return "\n".join([f"{len(leaks)} {noun} leaked:", *(f"  - {leak}" for leak in leaks)])


# ----------------------------------------------------------------------------- registry


@dataclass(slots=True)
class _Entry:
    what: str
    where: str
    is_open: Callable[[Any], bool]
    ref: Callable[[], Any]  # a weak reference, or a lambda holding a strong one


class ResourceRegistry:
    """Closeable resources (streams, responses, generators) and where they were created.

    Not a global: whoever creates resources (a backend, the injector) holds one and passes it
    in. Resources are held weakly where possible; one that is garbage-collected is no longer
    reported (CPython closes a dropped generator when it collects it). Thread-safe.
    """

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()

    def register(
        self,
        resource: R,
        what: str = "",
        *,
        is_open: Callable[[R], bool] | None = None,
        stacklevel: int = 1,
    ) -> R:
        """Track ``resource`` until it is closed; returns it, for use inline.

        ``what`` names the kind (default: the type name). ``is_open`` tells whether it is
        still open; by default generators and coroutines are open until they finish or are
        closed, objects with a boolean ``is_closed`` (httpx responses) or ``closed`` (files)
        attribute follow it, and anything else is open until :meth:`release`. ``stacklevel``
        1 records the caller of ``register`` as the creation site, 2 its caller, and so on.
        """
        frame = sys._getframe(stacklevel)
        where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        key = id(resource)
        try:
            ref: Callable[[], Any] = weakref.ref(resource, lambda _: self._forget(key))
        except TypeError:  # not weak-referenceable: hold it until it is released
            ref = lambda: resource  # noqa: E731 - a stand-in for weakref.ref's call
        entry = _Entry(what or type(resource).__name__, where, is_open or _default_is_open, ref)
        with self._lock:
            self._entries[key] = entry
        return resource

    def release(self, resource: object) -> None:
        """Forget ``resource``: it was closed (or handed over) by its owner."""
        self._forget(id(resource))

    def _forget(self, key: int) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def open_resources(self) -> dict[int, Leak]:
        """The resources still open, by identity, as :class:`Leak` records."""
        with self._lock:
            entries = list(self._entries.items())
        found: dict[int, Leak] = {}
        for key, entry in entries:
            resource = entry.ref()
            if resource is not None and entry.is_open(resource):
                found[key] = Leak(entry.what, _describe(resource), entry.where)
        return found

    def __len__(self) -> int:
        return len(self.open_resources())


def _default_is_open(resource: Any) -> bool:
    if inspect.isgenerator(resource):
        return inspect.getgeneratorstate(resource) != inspect.GEN_CLOSED
    if inspect.iscoroutine(resource):
        return inspect.getcoroutinestate(resource) != inspect.CORO_CLOSED
    if inspect.isasyncgen(resource):
        return resource.ag_frame is not None  # None once finished or closed
    for attribute in ("is_closed", "closed"):
        value = getattr(resource, attribute, None)
        if isinstance(value, bool):
            return not value
    return True


def _describe(resource: object) -> str:
    text = repr(resource)
    return text if len(text) <= 120 else text[:117] + "..."


# ---------------------------------------------------------------------------- snapshots


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What was alive at one moment; ``None`` for a kind that could not be observed."""

    threads: frozenset[threading.Thread]
    fds: Mapping[int, str] | None
    processes: Mapping[int, str] | None
    tasks: frozenset[asyncio.Task[Any]] | None = None
    resources: Mapping[int, Leak] = field(default_factory=dict)


def snapshot(
    loop: asyncio.AbstractEventLoop | None = None, registry: ResourceRegistry | None = None
) -> Snapshot:
    """Record the threads, file descriptors, child processes, unfinished tasks of ``loop``
    (when given) and open resources of ``registry`` (when given) of this process."""
    return Snapshot(
        threads=frozenset(t for t in threading.enumerate() if t.is_alive() and not _is_dummy(t)),
        fds=_fds(),
        processes=_children(),
        tasks=None if loop is None else frozenset(t for t in asyncio.all_tasks(loop)),
        resources={} if registry is None else registry.open_resources(),
    )


def _is_dummy(thread: threading.Thread) -> bool:
    return isinstance(thread, threading._DummyThread)


def _psutil() -> Any:
    """psutil, or None. Optional and costly to import: only used where /proc is missing."""
    try:
        import psutil  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        return None
    return psutil


def _fds() -> dict[int, str] | None:
    if os.path.isdir("/proc/self/fd"):
        found: dict[int, str] = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
            except OSError:  # closed since listing it: the listing's own descriptor, or a race
                continue
        return found
    psutil = _psutil()
    if psutil is None:
        return None
    return {f.fd: f.path for f in psutil.Process().open_files()}


def _children() -> dict[int, str] | None:
    if os.path.isdir("/proc/self/task"):
        pids: set[int] = set()
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/children") as f:
                    pids.update(int(p) for p in f.read().split())
            except FileNotFoundError:  # a thread that just ended, or a kernel without the file
                continue
        return {pid: _proc_cmdline(pid) for pid in pids}
    psutil = _psutil()
    if psutil is None:
        return None
    found: dict[int, str] = {}
    for child in psutil.Process().children(recursive=False):
        try:
            found[child.pid] = " ".join(child.cmdline()) or child.name()
        except psutil.Error:
            found[child.pid] = "?"
    return found


def _proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return "?"
    # "pid (name) state ...": the name stands in while the command line is still empty,
    # right after fork and before exec
    name, _, rest = stat.partition(" (")[2].rpartition(")")
    zombie = " (zombie: exited, never waited for)" if rest.split()[:1] == ["Z"] else ""
    return (cmdline or f"[{name}]") + zombie


# -------------------------------------------------------------------------------- diff


def diff(before: Snapshot, after: Snapshot) -> list[Leak]:
    """What is alive in ``after`` and was not in ``before``, as :class:`Leak` records."""
    leaks = [
        Leak("thread", _thread_detail(t))
        for t in sorted(after.threads - before.threads, key=lambda t: t.name)
        if t.is_alive()
    ]
    if before.fds is not None and after.fds is not None:
        old = set(before.fds.items())
        leaks += [
            Leak("fd", f"{fd} -> {target}")
            for fd, target in sorted(after.fds.items())
            if (fd, target) not in old
        ]
    if before.processes is not None and after.processes is not None:
        leaks += [
            Leak("process", f"pid {pid}: {cmd}")
            for pid, cmd in sorted(after.processes.items())
            if pid not in before.processes
        ]
    if after.tasks is not None:
        old_tasks = before.tasks or frozenset()
        leaks += [
            _task_leak(t)
            for t in sorted(after.tasks - old_tasks, key=lambda t: t.get_name())
            if not t.done()
        ]
    leaks += [leak for key, leak in after.resources.items() if key not in before.resources]
    return leaks


def _thread_detail(thread: threading.Thread) -> str:
    target = getattr(thread, "_target", None)  # private, but the only way to name the work
    name = getattr(target, "__qualname__", None)
    daemon = ", daemon" if thread.daemon else ""
    return f"{thread.name!r}" + (f" running {name}" if name else "") + daemon


def _task_leak(task: asyncio.Task[Any]) -> Leak:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", repr(coro))
    where = ""
    stack = task.get_stack(limit=1)
    if stack:
        frame = stack[0]
        where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
    return Leak("task", f"{task.get_name()!r} running {name}", where)


def check(
    before: Snapshot,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    registry: ResourceRegistry | None = None,
    grace: float = 0.5,
) -> list[Leak]:
    """Snapshot now and :func:`diff` against ``before``, allowing ``grace`` real seconds.

    Without leaks this returns at once. Otherwise it joins the new threads and re-checks
    every 10 ms until nothing leaks or the grace is spent (at most ``grace / 0.01`` polls,
    so a frozen clock cannot make it spin), and returns what still leaks.
    """
    leaks = diff(before, snapshot(loop, registry))
    if not leaks or grace <= 0:
        return leaks
    start = _REAL_TIME.now()
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread not in before.threads and thread is not current and not _is_dummy(thread):
            thread.join(max(0.0, grace - (_REAL_TIME.now() - start)))
    for _ in range(int(grace / _POLL) + 1):
        leaks = diff(before, snapshot(loop, registry))
        if not leaks or _REAL_TIME.now() - start >= grace:
            break
        _REAL_TIME.sleep(_POLL)
    return leaks
