"""The open-resource registry of the leak check, and where things are created.

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

:class:`Leak` is the record every part of the leak check reports with
(:mod:`pytest_resilience.core.leaks` has the check itself).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import site
import sys
import sysconfig
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import types
    from collections.abc import Callable, Iterable, Iterator

__all__ = [
    "Leak",
    "ResourceRegistry",
    "creation_site",
    "default_registry",
    "format_leaks",
    "track",
    "use_registry",
]

R = TypeVar("R")
T = TypeVar("T")

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
