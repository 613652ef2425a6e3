"""The leak check: what a piece of work left behind that was not there before.

::

    with watch():                                  # record where things are created
        before = snapshot(registry=default_registry())
        run_the_test()
        leaks = check(before, registry=default_registry())   # re-snapshots, short grace
    if leaks:
        raise AssertionError(format_leaks(leaks))

A :class:`Snapshot` records live Python threads, open file descriptors (with what they point
to), child processes, the unfinished asyncio tasks of a given loop, and the open resources
of a :class:`ResourceRegistry`. :func:`diff` is a pure comparison of two snapshots into
:class:`Leak` records; :func:`check` takes the second snapshot itself and, when it finds
leaks, allows a short *real-time* grace period (default 0.5 s) for things that are already
ending: it joins the new threads, collects garbage once if a resource, task or descriptor is
still there (an object kept alive only by a reference cycle is not leaked: the collector
frees it), and polls again. The grace is real time on purpose: a finishing thread or a child
being reaped does not follow a virtual clock. It costs nothing when nothing leaked.

How each kind is seen, cheapest first; a kind that cannot be seen is skipped (``None`` in
the snapshot), never guessed:

- threads: ``threading.enumerate()``, excluding dummy threads (native threads that merely
  called into Python, e.g. llama.cpp's log callback: Python cannot see them end);
- file descriptors: ``/proc/self/fd`` with ``readlink`` (Linux), else psutil's
  ``open_files()`` (regular files only), imported only then;
- child processes: ``/proc/self/task/*/children``, else psutil, imported only then;
- asyncio tasks: ``asyncio.all_tasks(loop)`` for the loop passed in; and, while a
  :func:`watch` is open, every task created on any loop
  (:mod:`pytest_resilience.core.leak_watch`);
- resources: a :class:`ResourceRegistry`, whose resources registered after the first
  snapshot and still open make the leaks. The backends feed the process-wide one
  (:func:`default_registry`) by themselves, at creation: a ``LlamaBackend`` (a loaded
  model) is open until ``close()``; a ``LlamaStream`` until it is closed, runs out, fails
  or is superseded by another generation; a ``DaemonStream`` until it is closed, ends or
  fails; an ``AsyncDaemonStream`` from its first ``anext`` (when the request is sent) until
  its response is closed. A ``DaemonBackend`` is not registered: what its connection pool
  holds is sockets, seen as descriptors with the line that opened them, and a client with
  no connection holds nothing.

File descriptors are compared by number *and* target, so a number reused for another file
counts as a new descriptor.

One-time opens are not leaks
----------------------------

A library may open something once per process and keep it for good: ``llama_cpp`` opens
``/dev/null`` twice when it is first imported (``llama_cpp/_utils.py``: ``outnull_file`` and
``errnull_file``, the sinks of its ``suppress_stdout_stderr``) and never closes them (hence
the "ResourceWarning: unclosed file <_io.TextIOWrapper name='/dev/null'>" printed when an
interpreter that loaded it exits with warnings as errors: llama_cpp's, not this package's).
The first test that imports it would be reported as leaking two descriptors, and no other.

What tells such an open from a leak is ownership, not a list of names. A leak is something
nothing owns any more, or something that piles up: run the test again and there is one
more. A file object bound to a *module attribute* is owned by the module, which lives as
long as the process; a module attribute holds one object, so running the code again
replaces it (the old one is then closed by the garbage collector) and never adds a second.
So :func:`check` excuses a new descriptor when the file or socket object that holds it is a
module attribute (``vars(module)[name].fileno() == fd``, for any module in
``sys.modules``), whether the module opened it at its import or at a first use later. The
scan costs a few milliseconds and runs only when new descriptors were found. A descriptor
held any other way (a local, a list, an object, a file a test never closed) is reported, as
is one that native code opened and no Python object holds.

Two alternatives were set aside: a warm-up before the first snapshot (it needs a list of
what to warm up, and it hides a leak made by the warm-up itself), and excusing whatever was
opened while ``sys.modules`` grew (a test that imports something and leaks a file in the
same breath would be excused; ownership is what the growth was standing in for).

The process-wide :class:`ResourceRegistry` is in :mod:`pytest_resilience.core.leak_registry`
and :func:`watch` in :mod:`pytest_resilience.core.leak_watch`, with the details of each;
their names are importable from here too.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .clock import SystemClock
from .leak_registry import (
    _SERIALS,
    Leak,
    ResourceRegistry,
    creation_site,
    default_registry,
    format_leaks,
    track,
    use_registry,
)
from .leak_watch import _THREAD_SITE, _WATCHER, Watch, _fileno, watch

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "Leak",
    "ResourceRegistry",
    "Snapshot",
    "Watch",
    "check",
    "creation_site",
    "default_registry",
    "diff",
    "format_leaks",
    "snapshot",
    "track",
    "use_registry",
    "watch",
]

#: The grace period is real time by design (see the module docstring).
_REAL_TIME = SystemClock()
_POLL = 0.01


# ---------------------------------------------------------------------------- snapshots


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What was alive at one moment; ``None`` for a kind that could not be observed.
    ``serial`` orders it among the creations a :func:`watch` records."""

    threads: frozenset[threading.Thread]
    fds: Mapping[int, str] | None
    processes: Mapping[int, str] | None
    tasks: frozenset[asyncio.Task[Any]] | None = None
    resources: Mapping[int, Leak] = field(default_factory=dict)
    serial: int = 0


def snapshot(
    loop: asyncio.AbstractEventLoop | None = None, registry: ResourceRegistry | None = None
) -> Snapshot:
    """Record the threads, file descriptors, child processes, unfinished tasks of ``loop``
    (when given) and open resources of ``registry`` (when given) of this process. A task
    that ``registry`` tracks is reported as a resource, not twice."""
    serial = next(_SERIALS)  # first: whatever is registered from now on is new
    tasks = None
    if loop is not None:
        tasks = frozenset(
            t for t in asyncio.all_tasks(loop) if registry is None or not registry.tracks(t)
        )
    return Snapshot(
        threads=frozenset(t for t in threading.enumerate() if t.is_alive() and not _is_dummy(t)),
        fds=_fds(),
        processes=_children(),
        tasks=tasks,
        resources={} if registry is None else registry.open_resources(),
        serial=serial,
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
    return [leak for leak, _ in _compare(before, after)]


def _compare(before: Snapshot, after: Snapshot) -> list[tuple[Leak, object]]:
    """The leaks of :func:`diff`, each with what it is about (for :func:`check`)."""
    found: list[tuple[Leak, object]] = [
        (Leak("thread", _thread_detail(t), getattr(t, "__dict__", {}).get(_THREAD_SITE, "")), t)
        for t in sorted(after.threads - before.threads, key=lambda t: t.name)
        if t.is_alive()
    ]
    if before.fds is not None and after.fds is not None:
        old = set(before.fds.items())
        found += [
            (Leak("fd", f"{fd} -> {target}"), (fd, target))
            for fd, target in sorted(after.fds.items())
            if (fd, target) not in old
        ]
    if before.processes is not None and after.processes is not None:
        found += [
            (Leak("process", f"pid {pid}: {cmd}"), pid)
            for pid, cmd in sorted(after.processes.items())
            if pid not in before.processes
        ]
    if after.tasks is not None:
        old_tasks = before.tasks or frozenset()
        found += [
            (_task_leak(t), t)
            for t in sorted(after.tasks - old_tasks, key=lambda t: t.get_name())
            if not t.done()
        ]
    # a resource registered before the first snapshot is not new, open then or not
    found += [
        (leak, key)
        for key, leak in after.resources.items()
        if key not in before.resources and key > before.serial
    ]
    return found


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


def _module_held_fds() -> set[int]:
    """The descriptors of the file and socket objects bound to module attributes: owned by
    their module for the life of the process (see "One-time opens" above)."""
    import socket  # noqa: PLC0415 - already imported wherever a socket can exist

    held: set[int] = set()
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(module, types.ModuleType) or not isinstance(namespace, dict):
            continue
        for value in list(namespace.values()):
            # the type, not isinstance(): a lazy proxy's __class__ may run code, or raise
            if issubclass(type(value), io.IOBase | socket.socket):
                fd = _fileno(value)
                if fd is not None:
                    held.add(fd)
    return held


def _current(
    before: Snapshot, loop: asyncio.AbstractEventLoop | None, registry: ResourceRegistry | None
) -> list[Leak]:
    """The leaks now: :func:`diff`, less the one-time opens, with the creation sites found."""
    found = _compare(before, snapshot(loop, registry))
    if any(leak.what == "fd" for leak, _ in found):
        held = _module_held_fds()
        found = [
            (leak, about)
            for leak, about in found
            if not (leak.what == "fd" and isinstance(about, tuple) and about[0] in held)
        ]
    leaks: list[Leak] = []
    for leak, about in found:
        if not leak.where:
            where = ""
            if leak.what == "fd" and isinstance(about, tuple):
                where = _WATCHER.fd_site(about[0], about[1], before.serial)
            elif leak.what == "process" and isinstance(about, int):
                where = _WATCHER.process_site(about, before.serial)
            if where:
                leak = Leak(leak.what, leak.detail, where)  # noqa: PLW2901
        leaks.append(leak)
    return leaks


def check(
    before: Snapshot,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    registry: ResourceRegistry | None = None,
    grace: float = 0.5,
) -> list[Leak]:
    """Snapshot now and :func:`diff` against ``before``, allowing ``grace`` real seconds.

    Descriptors held by module attributes are not leaks (see "One-time opens" above), and
    leaks get the creation sites a :func:`watch` recorded. Without leaks this returns at
    once. Otherwise it joins the new threads, collects garbage once if anything other than
    a thread or a process is left, and re-checks every 10 ms until nothing leaks or the
    grace is spent (at most ``grace / 0.01`` polls, so a frozen clock cannot make it spin),
    and returns what still leaks.
    """
    leaks = _current(before, loop, registry)
    if not leaks or grace <= 0:
        return leaks
    start = _REAL_TIME.now()
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread not in before.threads and thread is not current and not _is_dummy(thread):
            thread.join(max(0.0, grace - (_REAL_TIME.now() - start)))
    collected = False
    for _ in range(int(grace / _POLL) + 1):
        leaks = _current(before, loop, registry)
        if not leaks:
            break
        if not collected and any(leak.what not in ("thread", "process") for leak in leaks):
            collected = True  # what only a reference cycle keeps alive is not leaked
            gc.collect()
            continue
        if _REAL_TIME.now() - start >= grace:
            break
        _REAL_TIME.sleep(_POLL)
    return leaks
