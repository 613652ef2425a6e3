"""Record how the application under test reacts: the retries its own libraries make.

Apps rarely retry with our core: they use tenacity, stamina, backoff, the openai client's
built-in retries, or a loop of their own. While a watch is open, every retry any of them
schedules becomes an :class:`~pytest_resilience.core.events.AppRetry` event in the journal
(library, the retried callable's name as ``source``, the attempt that failed, the delay,
the error), stamped with the watch's clock, virtual or not::

    journal = Journal()
    with faults.observe.watch(journal, clock=clock) as watch:
        answer = app.ask("hi")                 # tenacity retries twice, then answers
    assert_retried(journal, times=2, name="ask", library="tenacity", error=ConnectionError)

``watch.observed`` names the libraries being observed, ``watch.skipped`` why the others are
not (not installed, or internals that moved: then nothing is patched for that library).
The application marks its own fallbacks with :func:`pytest_resilience.core.app.fell_back` or
:func:`pytest_resilience.core.app.fallback_point`, and reports the retries of a loop of its own
with :func:`pytest_resilience.core.app.retried`; while a watch is open they go to its journal.

Each library is hooked once, process wide (:mod:`faults.observe.seams`), when the first
watch opens, and put back exactly as it was when the last one closes. Watches nest and
may close in any order; the events go to the watch opened in the current context (thread,
task), else to the one opened last. A library installed but not imported yet is imported
by the first watch (openai excepted: its seam is a logger, there without the import).
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Self

from faults.observe.seams import SEAMS
from pytest_resilience.core.app import Observation

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from types import TracebackType

    from faults.observe.seams import Seam
    from pytest_resilience.core.clock import Clock
    from pytest_resilience.core.journal import Journal

__all__ = ["LIBRARIES", "Watch", "check", "unwatch", "watch"]

#: The libraries a watch observes by default.
LIBRARIES: tuple[str, ...] = tuple(SEAMS)

_lock = threading.Lock()
_users: dict[str, int] = {}  # library -> open watches observing it (installed while > 0)
_checked: dict[str, tuple[int, str | None]] = {}  # library -> (id of its module, check())


def check(library: str) -> str | None:
    """Why ``library``'s retries cannot be observed (not installed, internals moved), or
    None. Raises ``KeyError`` for a library no seam knows."""
    seam = SEAMS[library]
    module = id(sys.modules.get(library))
    cached = _checked.get(library)
    if cached is not None and cached[0] == module:
        return cached[1]
    problem = seam.check()
    _checked[library] = (id(sys.modules.get(library)), problem)
    return problem


class Watch:
    """An open watch: see :func:`watch`. ``close()`` (idempotent) ends it."""

    def __init__(
        self,
        journal: Journal,
        *,
        clock: Clock | None = None,
        libraries: Iterable[str] | None = None,
    ) -> None:
        wanted = LIBRARIES if libraries is None else tuple(dict.fromkeys(libraries))
        unknown = [name for name in wanted if name not in SEAMS]
        if unknown:
            raise ValueError(
                f"no seam for {', '.join(map(repr, unknown))}; known: {', '.join(LIBRARIES)}"
            )
        self.journal = journal
        self.observation = Observation(journal, clock=clock, libraries=wanted)
        self._wanted = wanted
        self.observed: tuple[str, ...] = ()
        self.skipped: Mapping[str, str] = {}

    @property
    def clock(self) -> Clock:
        """What stamps the events; may be set while open (the test's virtual clock, once
        the fixture that makes it has run)."""
        return self.observation.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self.observation.clock = clock

    @property
    def closed(self) -> bool:
        return not self.observation.is_open

    def open(self) -> Self:
        """Hook the libraries (the first watch does) and start taking events. Raises
        ``RuntimeError`` if already open."""
        if self.observation.is_open:
            raise RuntimeError(f"{self!r} is already open")
        observed: list[str] = []
        skipped: dict[str, str] = {}
        with _lock:
            try:
                for library in self._wanted:
                    if _users.get(library, 0) == 0:
                        problem = check(library)
                        if problem is not None:
                            skipped[library] = problem
                            continue
                        SEAMS[library].install()
                    _users[library] = _users.get(library, 0) + 1
                    observed.append(library)
            except BaseException:
                _release(observed)
                raise
        self.observed, self.skipped = tuple(observed), skipped
        self.observation.open()
        return self

    def close(self) -> None:
        """Stop taking events; the last watch puts every library back. Raises
        ``RuntimeError`` if a hooked attribute was replaced by something else meanwhile
        (what could be put back was)."""
        if not self.observation.is_open:
            return
        self.observation.close()
        with _lock:
            observed, self.observed = self.observed, ()
            _release(observed)

    def __enter__(self) -> Self:
        return self if self.observation.is_open else self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"observing {', '.join(self.observed) or 'nothing'}"
        return f"<Watch {state}>"


def _release(libraries: Iterable[str]) -> None:
    """One watch fewer for each library; uninstall those no watch needs. Under ``_lock``."""
    problems: list[str] = []
    for library in reversed(tuple(libraries)):
        _users[library] -= 1
        if _users[library] == 0:
            del _users[library]
            seam: Seam = SEAMS[library]
            try:
                seam.uninstall()
            except RuntimeError as exc:
                problems.append(f"{library}: {exc}")
    if problems:
        raise RuntimeError("could not put back: " + "; ".join(problems))


def watch(
    journal: Journal, *, clock: Clock | None = None, libraries: Iterable[str] | None = None
) -> Watch:
    """Start recording the application's retries into ``journal``, stamped with ``clock``
    (default: the system clock); returns the open :class:`Watch`, also a context manager.

    ``libraries`` (default :data:`LIBRARIES`: tenacity, stamina, backoff, openai) limits
    which libraries are observed. Raises ``ValueError`` for a library no seam knows.
    """
    return Watch(journal, clock=clock, libraries=libraries).open()


def unwatch(watch: Watch) -> None:
    """Close ``watch`` (the same as ``watch.close()``)."""
    watch.close()
