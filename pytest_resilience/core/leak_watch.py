"""Where the leak check's threads, processes, descriptors and tasks were created.

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
import logging
import os
import re
import sys
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from .leak_registry import (
    _SERIALS,
    Leak,
    ResourceRegistry,
    _items,
    creation_site,
    default_registry,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

__all__ = ["Watch", "watch"]


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
        registry = default_registry()
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
