"""The one clock every component waits and measures with.

Nothing in the core calls ``time.sleep``, ``time.monotonic`` or ``asyncio.sleep`` directly:
components take a ``clock`` (default :class:`SystemClock`). Tests pass a
:class:`VirtualClock`, where time moves only when somebody waits, so a ten-minute backoff
costs microseconds.

A clock offers four things:

- ``now()``: monotonic seconds;
- ``sleep(seconds)`` and ``await asleep(seconds)``;
- ``wait(event, timeout, what=...)``: block until a ``threading.Event`` is set or the
  timeout passes, returning whether it was set. Cancel scopes and the stream guard are
  built on this one primitive; ``what`` names the waiter in hang reports.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Protocol, runtime_checkable

from .errors import HangDetected

__all__ = ["Clock", "SystemClock", "VirtualClock"]


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...

    def wait(self, event: threading.Event, timeout: float | None = None, *, what: str = "") -> bool:
        """Block until ``event`` is set (True) or ``timeout`` seconds pass (False)."""
        ...


class SystemClock:
    """Real time: ``time.monotonic`` and real sleeps."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def wait(self, event: threading.Event, timeout: float | None = None, *, what: str = "") -> bool:
        if timeout is not None and timeout <= 0:
            return event.is_set()
        return event.wait(timeout)

    def __repr__(self) -> str:
        return "SystemClock()"


class VirtualClock:
    """Time that moves only when somebody waits.

    Single-threaded waits jump straight to their deadline. A wait that no deadline can end
    (``wait(event, None)`` on an event nobody will set) raises :class:`HangDetected` naming
    the waiter instead of hanging the test.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds}s)")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)

    def wait(self, event: threading.Event, timeout: float | None = None, *, what: str = "") -> bool:
        if event.is_set():
            return True
        if timeout is None:
            raise HangDetected(
                f"{what or 'a wait'} can never end: nothing will set its event and it has "
                "no deadline (add a timeout or a deadline scope above it)"
            )
        self.sleep(timeout)
        return event.is_set()

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now:.6f})"
