"""When a site's faults fire: failpoint semantics over a chain of terms.

A :class:`Schedule` holds the chain of one site and answers, once per call of the site,
:meth:`Schedule.decide`: the :class:`Decision` (which term fires, on which call) or
``None`` to pass through. The rules follow tikv/fail-rs (``FailPoint::eval`` and
``Action::get_task``), extended with ``@n``. On call number ``n`` (counted from 1), the
terms are tried in order, and for each term:

1. ``@n`` / ``@n+``: if the call number does not match (``n != at``, or ``n < at`` for
   ``@at+``), the term is skipped: no draw, no count used;
2. ``count*``: if the term has already fired ``count`` times, it is skipped, no draw;
3. ``pct%``: if ``pct`` is given and below 100, one number is drawn from the schedule's
   ``random.Random``; the term fires when ``rng.random() < pct / 100``. A failed draw skips
   the term *without* using its count, and the next term is tried (fail-rs: "an action
   will be checked only when its former action is not triggered");
4. otherwise the term fires: its count goes down by one and the search stops.

The first term that fires decides the call. If it is ``off``, the call passes through
(``decide()`` returns ``None``, and ``fired`` does not count it); for any other kind
``decide()`` returns the Decision. If no term fires, the call passes through: once every
term is used up, the site behaves normally. So ``2*none`` fails the first two calls,
``3*raise(ConnectionError)->off`` the first three, ``30%timeout`` about 30% of all calls,
``2*off->raise(ValueError)`` every call from the third.

Randomness is reproducible: :func:`derive_rng` seeds one generator per (seed, scope, site)
from a SHA-256 of the three (never Python's salted ``hash()``), so a site's draws do not
depend on other sites, on test order or on the xdist worker. A schedule with no
probabilistic term never draws.

``decide()`` is thread-safe without a lock, because a lock alone would cost more than the
rest of a decision: call numbers, counts and the ``fired`` total are ``itertools.count``
objects, whose ``next()`` is atomic under the GIL, so a ``3*`` term fires exactly three
times however threads interleave, and each call gets its own number. Draws happen in
whatever order threads reach them, so only single-threaded draw sequences are
reproducible. Terms that can never fire again (count used up, ``@n`` past) are dropped,
so a spent schedule costs one counter step. (On a free-threaded build without the GIL this
would need a lock; Python 3.11-3.13 with the GIL is what we support.)
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pytest_resilience.core.seeding import derive_rng

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from faults.spec import Entry, Site, Spec, Term

__all__ = ["Decision", "Schedule", "derive_rng", "schedules"]


@dataclass(frozen=True, slots=True)
class Decision:
    """A fault to inject: the ``term`` that fired (``index`` in its chain) on call ``call``."""

    term: Term
    call: int
    index: int


class _Slot:
    """One term of a chain, unpacked for speed, with its claims counter."""

    __slots__ = ("at", "claims", "count", "done", "index", "off", "p", "plus", "term")

    def __init__(self, index: int, term: Term) -> None:
        self.index = index
        self.term = term
        self.at = term.at or 0
        self.plus = term.at_and_after
        self.p = term.pct / 100 if term.pct is not None and term.pct < 100 else None
        self.count = term.count or 0  # meaningful only with claims
        # Claim number k (from 0) fires iff k < count: exactly `count` firings, lock-free.
        self.claims = None if term.count is None else itertools.count()
        self.done = False  # every claim taken: skipped without a draw
        self.off = term.kind == "off"

    def always(self, call: int) -> bool:
        """Fires on every call from ``call`` on that reaches it: no @n ahead, draw or count."""
        return (
            self.p is None
            and self.claims is None
            and (not self.at or (self.plus and call >= self.at))
        )


class Schedule:
    """Decides, call by call, whether a site's chain fires (rules in the module docstring).

    ``rng`` is required when a term has ``pct`` below 100 (``ValueError`` otherwise):
    randomness is always injected, never global. ``site`` names the site in ``repr``.
    """

    __slots__ = ("_calls", "_fired", "_live", "_past", "_rng", "chain", "site")

    def __init__(
        self, chain: Iterable[Term], *, rng: random.Random | None = None, site: str = ""
    ) -> None:
        self.chain = tuple(chain)
        self.site = site
        self._live = [_Slot(i, t) for i, t in enumerate(self.chain)]
        if rng is None and any(s.p is not None for s in self._live):
            raise ValueError("a chain with a probabilistic term needs a seeded rng")
        self._rng = rng or random.Random(0)  # never drawn from: no term needs it
        self._past = (0, 0)  # calls and firings before the last restart()
        self._calls = itertools.count(1)
        self._fired = itertools.count(1)
        self._prune(1)

    def restart(self, rng: random.Random | None = None) -> None:
        """Start the chain afresh, as if new: call numbers count from 1 again, each term
        can fire again, and ``rng`` (if given) draws the chances. :attr:`calls` and
        :attr:`fired` keep counting across restarts. Not for use while calls are decided
        on other threads."""
        self._past = (self.calls, self.fired)
        self._live = [_Slot(i, t) for i, t in enumerate(self.chain)]
        if rng is not None:
            self._rng = rng
        self._calls = itertools.count(1)
        self._fired = itertools.count(1)
        self._prune(1)

    @classmethod
    def for_entry(cls, entry: Entry, *, seed: int | str = 0, scope: str = "") -> Schedule:
        """The schedule of one spec entry, its generator derived from (seed, scope, site)."""
        site = str(entry.site)
        return cls(entry.chain, rng=derive_rng(seed, scope, site), site=site)

    @classmethod
    def replaying(cls, fired: Iterable[tuple[int, Term]], *, site: str = "") -> Schedule:
        """A schedule that fires exactly the given (call number, term) pairs, no more.

        This replays a journal: every term becomes ``@call`` with no ``pct`` or ``count``.
        """
        chain = [
            replace(t, pct=None, count=None, at=call, at_and_after=False)
            for call, t in sorted(fired, key=lambda pair: pair[0])
        ]
        return cls(chain, site=site)

    @property
    def calls(self) -> int:
        """How many times :meth:`decide` was called."""
        return self._past[0] + _value(self._calls) - 1

    @property
    def fired(self) -> int:
        """How many decisions injected a fault (``off`` firing is not counted)."""
        return self._past[1] + _value(self._fired) - 1

    @property
    def spent(self) -> bool:
        """True when no term can fire any more: the site passes through from now on."""
        return not self._live

    def decide(self) -> Decision | None:
        """Count one call of the site; the fault to inject on it, or ``None`` to pass."""
        # Read the chain before taking the call number: a thread that prunes a term for
        # having passed its @n took its own, later number after ours, so our list still
        # holds the term. Pruning publishes a new list and never edits one in place.
        live = self._live
        n = next(self._calls)
        for slot in live:
            at = slot.at
            if at and n != at and (n < at or not slot.plus):
                if n > at:
                    self._prune(n + 1)  # @n is past
                continue
            if slot.done:
                continue
            if slot.p is not None and self._rng.random() >= slot.p:
                continue
            if slot.claims is not None:
                claim = next(slot.claims)
                if claim + 1 >= slot.count:
                    slot.done = True
                    self._prune(n + 1)
                    if claim >= slot.count:
                        continue  # another thread took the last one meanwhile
            if slot.off:
                return None
            next(self._fired)
            return Decision(slot.term, n, slot.index)
        return None

    def _prune(self, next_call: int) -> None:
        live = [
            s for s in self._live if not s.done and not (s.at and not s.plus and s.at < next_call)
        ]
        # Nothing after a term that always fires is ever reached; and a chain whose first
        # live term is a plain "off" passes every call through from now on.
        for i, slot in enumerate(live):
            if slot.always(next_call):
                del live[i + 1 :]
                if i == 0 and slot.off:
                    live.clear()
                break
        self._live = live

    def __repr__(self) -> str:
        chain = "->".join(map(str, self.chain))
        return f"<Schedule {self.site}={chain} calls={self.calls} fired={self.fired}>"


def _value(counter: itertools.count[int]) -> int:
    """The next number an ``itertools.count`` will give, without taking it."""
    return int(repr(counter)[len("count(") : -1])


def schedules(spec: Spec, *, seed: int | str = 0, scope: str = "") -> Mapping[Site, Schedule]:
    """One schedule per entry of ``spec``, keyed by site."""
    return {e.site: Schedule.for_entry(e, seed=seed, scope=scope) for e in spec.entries}
