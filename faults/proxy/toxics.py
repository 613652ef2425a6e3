"""The toxics a :class:`~faults.proxy.FaultProxy` applies to the bytes it forwards: the
:class:`Toxic` base and its two kinds of hooks (``_Timing``, which decides when chunks are
released, and ``_Limit``, which lets a number of bytes through and then ends the
connection), the public toxics (``Latency``, ``Bandwidth``, ``Stall``, ``SlowClose``,
``Refuse``, ``ResetAfter``, ``TruncateAfter``, ``ResetAfterEvents``), the ``Direction`` they
apply to, and the checks of their arguments. They hold no sockets: the proxy's byte pump
(:mod:`faults.proxy.pump`) calls their hooks in the proxy's thread."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from faults.proxy.http1 import _SseCounter
from faults.spec import format_duration

Direction = Literal["upstream", "downstream"]
_DIRECTIONS: tuple[Direction, ...] = ("upstream", "downstream")
_Bytes = bytes  # the counting toxics have a field named ``bytes``


class Toxic:
    """Base of the toxics. ``str(toxic)`` is how events and reports name it.

    Toxics are compared by identity: the same object can be added once, to one direction.
    Their hooks run in the proxy's thread.
    """

    __slots__ = ()

    def new_state(self) -> Any:
        """Fresh per-connection state (called when the toxic first meets a connection)."""
        return None


class _Timing(Toxic):
    """A toxic that decides when chunks are released."""

    __slots__ = ()

    def schedule(self, state: Any, at: float, data: bytes) -> list[tuple[float, bytes]]:
        raise NotImplementedError


class _Limit(Toxic):
    """A toxic that lets a number of bytes through, then ends the connection."""

    __slots__ = ()
    ending: ClassVar[Literal["reset", "close"]]

    def cut(self, state: Any, data: bytes) -> int | None:
        """How many bytes of ``data`` pass before the end (None: all, and no end yet)."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False, slots=True)
class Latency(_Timing):
    """Hold each chunk ``delay`` seconds, plus or minus up to ``jitter`` (uniform, drawn from
    ``rng``; default a ``random.Random(0)`` of its own). Chunks never overtake each other.
    Raises ValueError for a negative or non-finite delay or jitter.
    """

    delay: float
    jitter: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def __post_init__(self) -> None:
        _check_seconds("delay", self.delay)
        _check_seconds("jitter", self.jitter)

    def schedule(self, state: Any, at: float, data: bytes) -> list[tuple[float, bytes]]:
        extra = self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return [(at + max(0.0, self.delay + extra), data)]

    def __str__(self) -> str:
        jitter = f", jitter={format_duration(self.jitter)}" if self.jitter else ""
        return f"latency({format_duration(self.delay)}{jitter})"


@dataclass(frozen=True, eq=False, slots=True)
class Bandwidth(_Timing):
    """Pass at most ``bytes_per_second``: data is cut into slices of a tenth of a second's
    worth, each released when the one before has "gone through". ValueError unless > 0.
    """

    bytes_per_second: float

    def __post_init__(self) -> None:
        if not (self.bytes_per_second > 0 and math.isfinite(self.bytes_per_second)):
            raise ValueError(f"bytes_per_second must be > 0, got {self.bytes_per_second!r}")

    def new_state(self) -> list[float]:
        return [-math.inf]  # when the link is free again

    def schedule(self, state: list[float], at: float, data: bytes) -> list[tuple[float, bytes]]:
        rate = self.bytes_per_second
        step = max(1, int(rate / 10))
        out = []
        for i in range(0, len(data), step):
            piece = data[i : i + step]
            state[0] = max(at, state[0]) + len(piece) / rate
            out.append((state[0], piece))
        return out

    def __str__(self) -> str:
        return f"bandwidth({self.bytes_per_second:g}B/s)"


@dataclass(frozen=True, eq=False, slots=True)
class Stall(Toxic):
    """Forward nothing, holding the data and the end of stream, until removed."""

    def __str__(self) -> str:
        return "stall"


@dataclass(frozen=True, eq=False, slots=True)
class SlowClose(Toxic):
    """Pass on the end of stream (or a truncation's close) ``delay`` seconds late."""

    delay: float

    def __post_init__(self) -> None:
        _check_seconds("delay", self.delay)

    def __str__(self) -> str:
        return f"slow_close({format_duration(self.delay)})"


@dataclass(frozen=True, eq=False, slots=True)
class Refuse(Toxic):
    """Refuse new connections (``ConnectionRefusedError``); open ones go on. No direction."""

    def __str__(self) -> str:
        return "refuse"


@dataclass(frozen=True, eq=False, slots=True)
class ResetAfter(_Limit):
    """Forward ``bytes`` bytes, then reset the connection (RST both ways)."""

    ending: ClassVar[Literal["reset", "close"]] = "reset"
    bytes: int

    def __post_init__(self) -> None:
        _check_count("bytes", self.bytes, minimum=0)

    def new_state(self) -> list[int]:
        return [self.bytes]  # bytes still allowed

    def cut(self, state: list[int], data: _Bytes) -> int | None:
        return _count_down(state, data)

    def __str__(self) -> str:
        return f"reset_after(bytes={self.bytes})"


@dataclass(frozen=True, eq=False, slots=True)
class TruncateAfter(_Limit):
    """Forward ``bytes`` bytes, then close the connection cleanly (FIN)."""

    ending: ClassVar[Literal["reset", "close"]] = "close"
    bytes: int

    def __post_init__(self) -> None:
        _check_count("bytes", self.bytes, minimum=0)

    def new_state(self) -> list[int]:
        return [self.bytes]

    def cut(self, state: list[int], data: _Bytes) -> int | None:
        return _count_down(state, data)

    def __str__(self) -> str:
        return f"truncate_after(bytes={self.bytes})"


@dataclass(frozen=True, eq=False, slots=True)
class ResetAfterEvents(_Limit):
    """Forward ``events`` server-sent events (each whole, with its blank line), then reset.
    Meant for the downstream direction of an HTTP SSE answer; see :mod:`faults.proxy`.
    """

    ending: ClassVar[Literal["reset", "close"]] = "reset"
    events: int

    def __post_init__(self) -> None:
        _check_count("events", self.events, minimum=1)

    def new_state(self) -> _SseCounter:
        return _SseCounter()

    def cut(self, state: _SseCounter, data: bytes) -> int | None:
        return state.feed(data, self.events)

    def __str__(self) -> str:
        return f"reset_after_events({self.events})"


def _check_seconds(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


def _check_count(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _count_down(state: list[int], data: bytes) -> int | None:
    left = state[0]
    if left > len(data):
        state[0] = left - len(data)
        return None
    state[0] = 0
    return left
