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
  :func:`watch` is open, every task created on any loop (see below);
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

The process-wide registry
-------------------------

:func:`default_registry` is one :class:`ResourceRegistry` for the process; :func:`track`
registers into it, recording as the creation site the first frame outside this package and
the standard library, preferably outside installed packages too (:func:`creation_site`:
the test line that called ``backend.stream(...)``, not the backend's own line). A registry
holds every resource through a weak reference: it never keeps anything alive, and a
resource that is garbage-collected is forgotten (a dropped stream is closed by its
finaliser: dropping is a way of closing). Weakref callbacks only append to a queue, which
the next locked call empties, so a collection that runs inside the registry's own lock
cannot deadlock it. Registering costs a frame walk and a dict insertion under a lock.

Whether a resource is new is decided by when it was registered, not by whether it was open
at the first snapshot: what a wider fixture registered is never a test's leak.
A leak is reported once: :meth:`ResourceRegistry.dismiss` drops what a failed check
reported, so that a check around it (the autouse check around the ``leak_check`` fixture,
a test around an in-process pytester run) does not report it again. Tests swap the
registry with :func:`use_registry`.

Where things were created: :func:`watch`
----------------------------------------

While at least one :func:`watch` is open (the pytest plugin keeps one open around each
test), the creation site of threads, child processes, file descriptors and asyncio tasks is
recorded, so that a leak says where it began:

- threads: ``threading.Thread.start`` is wrapped, and the site kept on the thread;
- child processes: ``subprocess.Popen.__init__`` is wrapped (asyncio's subprocesses use it);
- file descriptors: an audit hook (:func:`sys.addaudithook`) sees the ``open`` and
  ``socket.__new__`` events; a leaked file is matched by its path, a socket by its object;
- asyncio tasks: ``asyncio.BaseEventLoop.create_task`` is wrapped (``asyncio.create_task``,
  ``ensure_future``, ``TaskGroup`` and ``asyncio.Runner`` all go through it), and each task
  is registered in the default registry as open until it is done. A task left pending is a
  leak whatever its loop: running elsewhere, stopped, or closed. One that is destroyed
  while pending (its loop was closed under it, and the task dropped) is reported from
  asyncio's own "Task was destroyed but it is pending!" log record. A task that
  ``asyncio.run`` or pytest-asyncio's runner cancelled when it closed its loop ran its
  cleanup and is done: not a leak.

The wrappers are removed when the last watch closes, and do nothing while none is open; an
audit hook cannot be removed, so it stays, inert, after the first watch. Loops that do not
derive from ``BaseEventLoop`` (uvloop) are not seen, nor processes started with ``os.fork``.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import gc
import inspect
import io
import itertools
import logging
import os
import re
import site
import sys
import sysconfig
import threading
import types
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .clock import SystemClock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from types import TracebackType

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

R = TypeVar("R")
T = TypeVar("T")

#: The grace period is real time by design (see the module docstring).
_REAL_TIME = SystemClock()
_POLL = 0.01
#: One counter orders snapshots, registrations and recorded creations.
_SERIALS = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Leak:
    """One thing left behind: ``what`` kind, a ``detail`` and, when known, ``where`` it began."""

    what: str  # thread | fd | process | task | the resource kind given to the registry
    detail: str
    where: str = ""
    #: for a registry's resource, its registration (see :meth:`ResourceRegistry.dismiss`)
    key: int = field(default=0, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}" + (f" (created at {self.where})" if self.where else "")


def format_leaks(leaks: list[Leak]) -> str:
    """A readable list of leaks, one a line, for a test failure."""
    noun = "thing" if len(leaks) == 1 else "things"
    return "\n".join([f"{len(leaks)} {noun} leaked:", *(f"  - {leak}" for leak in leaks)])


# ------------------------------------------------------------------------ creation sites


def _prefixes(*paths: str | None) -> tuple[str, ...]:
    found = {os.path.normcase(os.path.abspath(p)) for p in paths if p}
    return tuple(sorted(p.rstrip(os.sep) + os.sep for p in found))


_PATHS = sysconfig.get_paths()
#: Frames never named as a creation site: this package, and the standard library...
_OWN = _prefixes(os.path.dirname(os.path.dirname(__file__)))  # the whole package
_STDLIB = _prefixes(_PATHS.get("stdlib"), _PATHS.get("platstdlib"))
#: ... and frames named only when nothing better is on the stack: installed packages and
#: scripts (checked before the standard library, which may hold site-packages).
_INSTALLED = _prefixes(
    _PATHS.get("purelib"), _PATHS.get("platlib"), _PATHS.get("scripts"), site.USER_SITE
)
_MAX_DEPTH = 64


def _frame_site(frame: types.FrameType) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


def creation_site(stacklevel: int = 1) -> str:
    """``file:line in function`` of the code that is creating something.

    Starting at the caller (``stacklevel`` 1; 2 for its caller, and so on), the first frame
    outside this package and the standard library, preferring one outside installed
    packages and scripts too (a test or an application rather than the library it called);
    ``""`` if there is none.
    """
    try:
        frame: types.FrameType | None = sys._getframe(stacklevel)
    except ValueError:
        return ""
    fallback: types.FrameType | None = None
    for _ in range(_MAX_DEPTH):
        if frame is None:
            break
        filename = frame.f_code.co_filename
        kind = _KINDS.get(filename)
        if kind is None:
            kind = _KINDS[filename] = _kind(filename)
        if kind == _USER:
            return _frame_site(frame)
        if kind == _THIRD_PARTY and fallback is None:
            fallback = frame
        frame = frame.f_back
    return "" if fallback is None else _frame_site(fallback)


_IGNORED, _THIRD_PARTY, _USER = range(3)
_KINDS: dict[str, int] = {}  # by file name: one lookup a frame


def _kind(filename: str) -> int:
    name = os.path.normcase(filename)
    if name.startswith(("<", *_OWN)):  # "<frozen importlib._bootstrap>", "<string>"
        return _IGNORED
    if name.startswith(_INSTALLED):
        return _THIRD_PARTY
    return _IGNORED if name.startswith(_STDLIB) else _USER


# ----------------------------------------------------------------------------- registry


@dataclass(slots=True)
class _Entry:
    serial: int
    what: str
    where: str
    is_open: Callable[[Any], bool]
    describe: Callable[[Any], str]
    ref: Callable[[], Any]  # a weak reference, or a lambda holding a strong one


class ResourceRegistry:
    """Closeable resources (streams, responses, models, tasks) and where they were created.

    The backends register into the process-wide one (:func:`default_registry`); anyone may
    hold another. Resources are held weakly where possible; one that is garbage-collected is
    no longer reported (CPython closes a dropped generator when it collects it). Thread-safe.
    """

    _LOST_MAX = 256

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        # Filled from weakref callbacks and finalisers, which may run inside a locked
        # section of this very thread (a collection triggered there): appends only, no lock.
        self._dead: deque[tuple[int, int]] = deque()
        self._lost: deque[tuple[int, Leak]] = deque(maxlen=self._LOST_MAX)
        self._dismissed: set[int] = set()

    def register(
        self,
        resource: R,
        what: str = "",
        *,
        is_open: Callable[[R], bool] | None = None,
        describe: Callable[[R], str] | None = None,
        stacklevel: int = 1,
        where: str | None = None,
    ) -> R:
        """Track ``resource`` until it is closed; returns it, for use inline.

        ``what`` names the kind (default: the type name). ``is_open`` tells whether it is
        still open; by default generators and coroutines are open until they finish or are
        closed, objects with a boolean ``is_closed`` (httpx responses) or ``closed`` (files)
        attribute follow it, and anything else is open until :meth:`release`. ``describe``
        gives the text of a report (default: the ``repr``, cut at 120 characters). ``where``
        is the creation site; without it, ``stacklevel`` 1 records the caller of
        ``register``, 2 its caller, and so on.
        """
        self._add(
            resource, what, is_open, describe, where or _frame_site(sys._getframe(stacklevel))
        )
        return resource

    def _add(
        self,
        resource: Any,
        what: str,
        is_open: Callable[[Any], bool] | None,
        describe: Callable[[Any], str] | None,
        where: str,
    ) -> int:
        key, serial = id(resource), next(_SERIALS)
        try:
            ref: Callable[[], Any] = weakref.ref(
                resource, lambda _: self._dead.append((key, serial))
            )
        except TypeError:  # not weak-referenceable: hold it until it is released
            ref = lambda: resource  # noqa: E731 - a stand-in for weakref.ref's call
        entry = _Entry(
            serial,
            what or type(resource).__name__,
            where,
            is_open or _default_is_open,
            describe or _describe,
            ref,
        )
        with self._lock:
            self._purge()
            self._entries[key] = entry
        return serial

    def release(self, resource: object) -> None:
        """Forget ``resource``: it was closed (or handed over) by its owner."""
        with self._lock:
            self._purge()
            self._entries.pop(id(resource), None)

    def tracks(self, resource: object) -> bool:
        """Whether ``resource`` is registered here (open or not)."""
        with self._lock:
            entry = self._entries.get(id(resource))
        return entry is not None and entry.ref() is resource

    def _purge(self) -> None:
        """Drop the entries of collected resources (with the lock held)."""
        while self._dead:
            key, serial = self._dead.popleft()
            entry = self._entries.get(key)
            if entry is not None and entry.serial == serial:
                del self._entries[key]

    def _lose(self, serial: int, leak: Leak) -> None:
        """Record that the resource registered as ``serial`` went away while still open."""
        self._lost.append((serial, leak))

    def dismiss(self, leaks: Iterable[Leak]) -> None:
        """Stop reporting the resources of these leaks: they have been reported.

        A leak is reported once, by the first check that fails for it: a check around
        another one (the plugin's autouse check around the ``leak_check`` fixture, a test
        around an in-process pytester run) does not report it again.
        """
        with self._lock:
            self._dismissed.update(leak.key for leak in leaks if leak.key)

    def open_resources(self) -> dict[int, Leak]:
        """The resources still open, as :class:`Leak` records keyed by registration (a
        number never reused), with those that went away while open (tasks destroyed
        while pending)."""
        with self._lock:
            self._purge()
            entries = list(self._entries.values())
        dismissed = self._dismissed
        found = {key: leak for key, leak in _items(self._lost) if key not in dismissed}
        for entry in entries:
            resource = entry.ref()
            if resource is None or entry.serial in dismissed:
                continue
            try:
                if not entry.is_open(resource):
                    continue
                detail = entry.describe(resource)
            except Exception as exc:  # noqa: BLE001 - a probe must not break the check
                detail = f"{_describe(resource)} (its probe raised {type(exc).__name__})"
            found[entry.serial] = Leak(entry.what, detail, entry.where, entry.serial)
        return found

    def __len__(self) -> int:
        return len(self.open_resources())


def _items(queue: deque[T]) -> list[T]:
    """A copy of a deque that other threads (or finalisers) may append to meanwhile."""
    for _ in range(100):
        try:
            return list(queue)
        except RuntimeError:  # mutated during the copy: try again
            continue
    return []


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


_registry = ResourceRegistry()


def default_registry() -> ResourceRegistry:
    """The process-wide registry that the backends register into."""
    return _registry


@contextlib.contextmanager
def use_registry(registry: ResourceRegistry | None = None) -> Iterator[ResourceRegistry]:
    """Make ``registry`` (default: a new one) the process-wide registry for the block."""
    global _registry
    previous, _registry = _registry, registry if registry is not None else ResourceRegistry()
    try:
        yield _registry
    finally:
        _registry = previous


def track(
    resource: R,
    what: str = "",
    *,
    is_open: Callable[[R], bool] | None = None,
    describe: Callable[[R], str] | None = None,
) -> R:
    """Register ``resource`` in the process-wide registry, created at :func:`creation_site`
    (the frames of this package are skipped: called from a backend's constructor, that is
    the code that called the backend). Returns ``resource``."""
    return _registry.register(
        resource, what, is_open=is_open, describe=describe, where=creation_site()
    )


# ------------------------------------------------------------------------------ watching


class _Watcher:
    """Records creation sites while at least one :class:`Watch` is open (module docstring)."""

    def __init__(self) -> None:
        self.active = 0
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []
        self._audited = False
        # (serial, absolute path, site) of files opened; (serial, socket, site) of sockets
        self.opens: deque[tuple[int, str, str]] = deque(maxlen=4096)
        self.sockets: deque[tuple[int, weakref.ref[Any], str]] = deque(maxlen=1024)
        self.pids: deque[tuple[int, int, str]] = deque(maxlen=1024)  # (serial, pid, site)
        # (name, registry, serial, site, detail) of tasks, for asyncio's destruction record
        self.tasks: deque[tuple[str, ResourceRegistry, int, str, str]] = deque(maxlen=1024)

    def acquire(self) -> None:
        with self._lock:
            self.active += 1
            if self.active == 1:
                self._install()

    def release(self) -> None:
        with self._lock:
            self.active -= 1
            if self.active == 0:
                undo, self._undo = self._undo, []
                for step in reversed(undo):
                    step()

    def _install(self) -> None:
        import subprocess  # noqa: PLC0415 - only a leak check needs it

        if not self._audited:
            sys.addaudithook(self._audit)  # cannot be removed: inert while inactive
            self._audited = True
        self._wrap(threading.Thread, "start", self._thread_started)
        self._wrap(subprocess.Popen, "__init__", self._process_started)
        self._wrap(asyncio.BaseEventLoop, "create_task", self._task_created)
        handler = _DestroyedPending(self)
        logger = logging.getLogger("asyncio")
        logger.addHandler(handler)
        self._undo.append(lambda: logger.removeHandler(handler))

    def _wrap(self, owner: type, name: str, after: Callable[[Any, Any], None]) -> None:
        original = vars(owner)[name]

        @functools.wraps(original)
        def wrapper(this: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(this, *args, **kwargs)
            if self.active:
                with contextlib.suppress(Exception):  # bookkeeping must never break the call
                    after(this, result)
            return result

        setattr(owner, name, wrapper)

        def undo() -> None:
            if vars(owner).get(name) is wrapper:  # not if someone wrapped it after us
                setattr(owner, name, original)

        self._undo.append(undo)

    # each runs after the wrapped call; creation_site() skips this module's frames

    def _thread_started(self, thread: threading.Thread, _: object) -> None:
        vars(thread)[_THREAD_SITE] = creation_site()

    def _process_started(self, process: Any, _: object) -> None:
        self.pids.append((next(_SERIALS), process.pid, creation_site()))

    def _task_created(self, loop: object, task: asyncio.Task[Any]) -> None:
        where = creation_site()
        registry = _registry
        serial = registry._add(task, "task", _task_is_open, _task_detail, where)
        self.tasks.append((task.get_name(), registry, serial, where, _task_name(task)))

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event not in ("open", "socket.__new__"):
            return
        try:
            if event == "open":
                path = args[0]
                if isinstance(path, int) or path is None:
                    return  # an existing descriptor wrapped: not a new one
                path = os.fsdecode(os.fspath(path))
                if not os.path.isabs(path):
                    path = os.path.join(os.getcwd(), path)
                self.opens.append((next(_SERIALS), path, creation_site()))
            else:
                self.sockets.append((next(_SERIALS), weakref.ref(args[0]), creation_site()))
        except Exception:  # noqa: BLE001 - an audit hook must never raise
            pass

    # --------------------------------------------------------------------- lookups

    def process_site(self, pid: int, since: int) -> str:
        for serial, known, where in reversed(_items(self.pids)):
            if serial <= since:
                break
            if known == pid:
                return where
        return ""

    def fd_site(self, fd: int, target: str, since: int) -> str:
        if target.startswith("socket:"):
            for serial, ref, where in reversed(_items(self.sockets)):
                if serial <= since:
                    break
                sock = ref()
                if sock is not None and _fileno(sock) == fd:
                    return str(where)
            return ""
        for serial, path, where in reversed(_items(self.opens)):
            if serial <= since:
                break
            if path == target or os.path.realpath(path) == target:
                return where
        return ""

    def task_destroyed(self, message: str) -> None:
        match = _TASK_NAME.search(message)
        if match is None:
            return
        try:
            name = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            return
        for known, registry, serial, where, detail in reversed(_items(self.tasks)):
            if known == name:
                reason = "destroyed while pending: its loop was closed before it ended"
                registry._lose(serial, Leak("task", f"{detail}, {reason}", where, serial))
                return


_THREAD_SITE = "_pytest_resilience_created_at"
_DESTROYED = "Task was destroyed but it is pending!"
_TASK_NAME = re.compile(r"<Task pending name=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


class _DestroyedPending(logging.Handler):
    """Hears asyncio report a task destroyed while pending, on any loop."""

    def __init__(self, watcher: _Watcher) -> None:
        super().__init__(logging.ERROR)
        self._watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if message.startswith(_DESTROYED):
                self._watcher.task_destroyed(message)
        except Exception:  # noqa: BLE001 - a log handler must not raise
            pass


def _fileno(obj: Any) -> int | None:
    try:
        fd = obj.fileno()
    except Exception:  # noqa: BLE001 - closed, detached, or not a real file: no descriptor
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _task_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or repr(coro)
    return f"{task.get_name()!r} running {name}"


def _task_detail(task: asyncio.Task[Any]) -> str:
    closed = task.get_loop().is_closed()
    return _task_name(task) + (", on a closed loop" if closed else ", still pending")


def _task_is_open(task: asyncio.Task[Any]) -> bool:
    return not task.done()


_WATCHER = _Watcher()


class Watch:
    """An open watch (see :func:`watch`); ``close()`` it, or use it as a context manager."""

    def __init__(self) -> None:
        _WATCHER.acquire()
        self._open = True

    def close(self) -> None:
        """Stop watching (the wrappers go when the last watch closes). Idempotent."""
        if self._open:
            self._open = False
            _WATCHER.release()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def watch() -> Watch:
    """Record where threads, processes, descriptors and tasks are created, and track every
    asyncio task, until the returned :class:`Watch` is closed. Watches nest."""
    return Watch()


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
