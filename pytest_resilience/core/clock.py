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

:class:`SystemClock` is real time. The :class:`VirtualClock` (in
:mod:`pytest_resilience.core.virtual_clock`, importable from here too) is the rest of the
story: its rules are in that module's docstring, and its event loop in
:mod:`pytest_resilience.core.virtual_loop`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .virtual_clock import VirtualClock
from .virtual_loop import _VirtualEventLoop

if TYPE_CHECKING:
    import threading

__all__ = ["Clock", "SystemClock", "VirtualClock", "loop_clock"]


@runtime_checkable
class Clock(Protocol):
    """What every component that waits or measures time takes: see the module docstring."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...

    def wait(
        self,
        event: threading.Event,
        timeout: float | None = None,
        *,
        what: str = "",  # pragma: no mutate - a protocol's methods never run
    ) -> bool:
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

    def wait(
        self,
        event: threading.Event,
        timeout: float | None = None,
        *,
        what: str = "",  # pragma: no mutate - names a waiter in hang reports; real time makes none
    ) -> bool:
        if timeout is not None and timeout <= 0:
            return event.is_set()
        return event.wait(timeout)

    def __repr__(self) -> str:
        return "SystemClock()"


def loop_clock(loop: asyncio.AbstractEventLoop) -> Clock:
    """The clock ``loop`` keeps time with: the :class:`VirtualClock` behind a loop made by
    :meth:`VirtualClock.new_event_loop`, else a :class:`SystemClock`."""
    return loop.clock if isinstance(loop, _VirtualEventLoop) else SystemClock()
