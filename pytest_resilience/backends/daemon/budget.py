"""The time one daemon call may take. :class:`Timeouts` are the backend's limits (connect,
read, write, total); a call's budget is its ``total`` or the current cancel scope's remaining
time, whichever is shorter. The sync client enforces the budget when it sends (every httpx
timeout is capped by it) and between chunks, so a blocking read can overrun the budget by at
most that capped read timeout; in async code ``async with deadline(...)`` also cancels the
task on time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...core.cancel import current_scope
from ...core.errors import DeadlineExceeded
from .wire import _httpx

if TYPE_CHECKING:
    import httpx

    from ...core.cancel import CancelScope
    from ...core.clock import Clock

__all__ = ["Timeouts"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed to connect, to wait for each read (the idle gap of a stream), to
    write, and in total per call (None: only the cancel scope bounds it).
    """

    connect: float = 5.0
    read: float = 60.0
    write: float = 10.0
    total: float | None = None


class _Budget:
    """The time one call may take: the backend's total timeout and the cancel scope around
    the call (and, for a stream, the scope around each ``next()``).
    """

    __slots__ = ("clock", "deadline", "left", "scope", "timeouts")

    def __init__(self, timeouts: Timeouts, clock: Clock) -> None:
        self.timeouts = timeouts
        self.clock = clock
        self.scope = current_scope()
        self.deadline = None if timeouts.total is None else clock.now() + timeouts.total
        self.left: float | None = None  # the time left when the request was sent

    def _scopes(self) -> tuple[CancelScope, ...]:
        here = current_scope()
        found = (self.scope, None if here is self.scope else here)
        return tuple(s for s in found if s is not None)

    def _own_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self.clock.now())

    def remaining(self) -> float | None:
        left = [s.remaining() for s in self._scopes()]
        left.append(self._own_remaining())
        known = [x for x in left if x is not None]
        return min(known) if known else None

    def check(self) -> None:
        """Raise Cancelled / DeadlineExceeded if a scope ended or the total ran out."""
        for scope in self._scopes():
            scope.check()
        if self.deadline is not None and self.clock.now() >= self.deadline:
            raise self.exceeded()

    def limited(self, timeout: float) -> bool:
        """Whether the budget, not ``timeout``, bounded the request's wait."""
        return self.left is not None and self.left < timeout

    def exceeded(self) -> DeadlineExceeded:
        """The error of whichever limit ran out first: a scope's deadline or the total."""
        own = self._own_remaining()
        for scope in self._scopes():
            left = scope.remaining()
            if left is not None and (own is None or left <= own):
                spent = f" of {scope.budget:g}s" if scope.budget is not None else ""
                return DeadlineExceeded(f"{scope.name}{spent} exceeded", budget=scope.budget)
        total = self.timeouts.total
        return DeadlineExceeded(f"the call's time budget of {total:g}s ran out", budget=total)

    def httpx_timeout(self) -> httpx.Timeout:
        """The httpx timeouts for a request sent now: each capped by the time left."""
        self.check()
        self.left = left = self.remaining()
        t = self.timeouts

        def cap(value: float) -> float:
            return value if left is None else max(min(value, left), 1e-3)

        timeout: httpx.Timeout = _httpx().Timeout(
            connect=cap(t.connect), read=cap(t.read), write=cap(t.write), pool=cap(t.connect)
        )
        return timeout
