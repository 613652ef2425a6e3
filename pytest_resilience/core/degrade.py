"""Graceful degradation: answer with less when the model struggles, and recover slowly.

::

    degrader = Degrader(
        "llm",
        policy=DegradePolicy(degrade_at=Limits(error_rate=0.5, latency=8.0),
                             restore_below=Limits(error_rate=0.1, latency=2.0)),
        models=("gemma-4b", "gemma-1b", "gemma-270m"),     # large to small
        clock=clock, journal=journal,
    )
    if degrader.level.generates:
        params = degrader.adjust(GenerationParams(max_tokens=512))
        started = clock.now()
        try:
            text = backend.generate(prompt, params)
        except BackendError as exc:
            degrader.record(False, clock.now() - started, error=exc)
            raise
        degrader.record(True, clock.now() - started)
    elif degrader.level is Level.CACHED_ONLY:
        text = cache.get(prompt)
    else:
        text = STATIC_ANSWER

Levels (:class:`Level`), from full to minimal::

    FULL ─> REDUCED ─> MINIMAL ─> CACHED_ONLY ─> STATIC
    every token      half the tokens, the next smaller model, cooler sampling, fewer tools
                     ...                        no generation: cache only; then a static answer

The rules, judged on the outcomes recorded in the last ``policy.window`` seconds (on the
injected clock) since the level last changed:

- **step down** one level when at least ``min_calls`` outcomes are in the window and the
  error rate reaches ``degrade_at.error_rate`` or the p90 latency reaches
  ``degrade_at.latency``;
- **step down at once**, whatever the counts, on an error whose classification says
  ``REDUCE_LOAD`` (``MemoryError``, ``ResourceExhausted``, "failed to create context"...):
  "out of memory degrades to a lower level";
- **step up** one level only after ``dwell`` seconds at the current level, with at least
  ``min_calls`` outcomes in the window, and both the error rate and the p90 latency at or
  below ``restore_below``, which must be lower than ``degrade_at`` (hysteresis: a service
  hovering near a threshold does not flap).

Each change clears the window, so the new level is judged on its own outcomes, and appends a
:class:`~pytest_resilience.core.events.DegradationChanged` event (levels by their lower-case
names). Thread-safe; events are appended under the degrader's lock so they keep their order.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .classify import Action, classify
from .clock import Clock, SystemClock
from .events import DegradationChanged

if TYPE_CHECKING:
    from collections.abc import Sequence

    from _typeshed import DataclassInstance

    from .journal import Journal

__all__ = ["DegradePolicy", "Degrader", "Level", "Limits", "Profile"]

D = TypeVar("D", bound="DataclassInstance")


class Level(enum.IntEnum):
    """How much is given up; higher is more degraded."""

    FULL = 0
    REDUCED = 1
    MINIMAL = 2
    CACHED_ONLY = 3
    STATIC = 4

    @property
    def label(self) -> str:
        """The name events and reports use: ``"cached_only"``."""
        return self.name.lower()

    @property
    def generates(self) -> bool:
        """True while the model should still be asked (FULL, REDUCED, MINIMAL)."""
        return self < Level.CACHED_ONLY


@dataclass(frozen=True, slots=True)
class Limits:
    """An error rate (0 to 1) and a p90 latency in seconds."""

    error_rate: float
    latency: float

    def __post_init__(self) -> None:
        if not 0 <= self.error_rate <= 1:
            raise ValueError(f"Limits needs 0 <= error_rate <= 1, got {self.error_rate}")
        if not self.latency >= 0:
            raise ValueError(f"Limits needs latency >= 0, got {self.latency}")


@dataclass(frozen=True, slots=True)
class DegradePolicy:
    """When to step down and when to step back up. Raises ``ValueError`` on bad settings."""

    degrade_at: Limits = Limits(error_rate=0.5, latency=10.0)
    restore_below: Limits = Limits(error_rate=0.1, latency=3.0)
    window: float = 60.0  # seconds of outcomes that count
    min_calls: int = 5  # outcomes needed before the rates mean anything
    dwell: float = 30.0  # seconds at a level before stepping up

    def __post_init__(self) -> None:
        if not (
            self.restore_below.error_rate < self.degrade_at.error_rate
            and self.restore_below.latency < self.degrade_at.latency
        ):
            raise ValueError(
                "DegradePolicy needs restore_below lower than degrade_at in both error rate "
                f"and latency (hysteresis), got {self.restore_below} and {self.degrade_at}"
            )
        if not self.window > 0:
            raise ValueError(f"DegradePolicy needs window > 0, got {self.window}")
        if self.min_calls < 1:
            raise ValueError(f"DegradePolicy needs min_calls >= 1, got {self.min_calls}")
        if self.dwell < 0:
            raise ValueError(f"DegradePolicy needs dwell >= 0, got {self.dwell}")


@dataclass(frozen=True, slots=True)
class Profile:
    """How one level lowers generation parameters (see :meth:`Degrader.adjust`).

    ``token_scale`` multiplies ``max_tokens`` (at least 1 token stays); ``model`` indexes the
    degrader's models, large to small (clamped to the smallest); ``temperature`` caps the
    temperature; ``tools`` caps the number of tools. ``None`` leaves a value alone.
    """

    token_scale: float = 1.0
    model: int = 0
    temperature: float | None = None
    tools: int | None = None


_MINIMAL = Profile(token_scale=0.25, model=2, temperature=0.2, tools=0)

#: Half the tokens and the next smaller model when reduced; a quarter, the smallest model,
#: near-greedy sampling and no tools from minimal on (the cached and static levels keep the
#: minimal parameters for callers that still generate, e.g. to fill the cache).
DEFAULT_PROFILES: Mapping[Level, Profile] = {
    Level.FULL: Profile(),
    Level.REDUCED: Profile(token_scale=0.5, model=1, temperature=0.7, tools=3),
    Level.MINIMAL: _MINIMAL,
    Level.CACHED_ONLY: _MINIMAL,
    Level.STATIC: _MINIMAL,
}


@dataclass(slots=True)
class _Window:
    """Outcomes ``(time, failed, latency)`` of the current level, oldest first."""

    seconds: float
    outcomes: deque[tuple[float, bool, float]] = field(default_factory=deque)

    def add(self, now: float, failed: bool, latency: float) -> None:
        self.outcomes.append((now, failed, latency))
        self.expire(now)

    def expire(self, now: float) -> None:
        while self.outcomes and now - self.outcomes[0][0] >= self.seconds:
            self.outcomes.popleft()

    def stats(self) -> tuple[int, int, float]:
        """``(calls, failures, p90 latency)``; the p90 is nearest-rank, 0 when empty."""
        calls = len(self.outcomes)
        if not calls:
            return 0, 0, 0.0
        latencies = sorted(o[2] for o in self.outcomes)
        failures = sum(o[1] for o in self.outcomes)
        return calls, failures, latencies[math.ceil(0.9 * calls) - 1]


class Degrader:
    """Tracks outcomes and moves between :class:`Level` s; see the module docstring.

    ``lowest`` is the most degraded level it may reach (e.g. ``Level.MINIMAL`` for a service
    without a cache); ``profiles`` override :data:`DEFAULT_PROFILES` per level.
    """

    def __init__(
        self,
        name: str = "degrade",
        *,
        policy: DegradePolicy | None = None,
        models: Sequence[str] = (),
        profiles: Mapping[Level, Profile] | None = None,
        lowest: Level = Level.STATIC,
        clock: Clock | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.name = name
        self.policy = policy if policy is not None else DegradePolicy()
        self.models = tuple(models)
        self.profiles = {**DEFAULT_PROFILES, **(profiles or {})}
        self.lowest = lowest
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.journal = journal
        self._lock = threading.RLock()
        self._level = Level.FULL
        self._window = _Window(self.policy.window)
        self._changed_at = self.clock.now()

    @property
    def level(self) -> Level:
        return self._level

    @property
    def profile(self) -> Profile:
        return self.profiles[self._level]

    @property
    def model(self) -> str | None:
        """The model for the current level, from ``models`` (large to small), or None."""
        if not self.models:
            return None
        return self.models[min(self.profile.model, len(self.models) - 1)]

    # ------------------------------------------------------------------------- outcomes

    def record(
        self, success: bool, latency: float = 0.0, *, error: BaseException | None = None
    ) -> Level:
        """Count one outcome (``latency`` in seconds) and return the level it leads to.

        An ``error`` whose classification is ``REDUCE_LOAD`` (out of memory) steps down at
        once; any other ``Exception`` makes the outcome a failure. An ``error`` that is not an
        ``Exception`` (``Cancelled``, ``HangDetected``, ``asyncio.CancelledError``) says
        nothing about the model: it is not counted, and ``classify()`` is not asked about it.
        """
        if error is not None and not isinstance(error, Exception):
            return self._level
        failed = not success or error is not None
        with self._lock:
            now = self.clock.now()
            self._window.add(now, failed, latency)
            if error is not None and classify(error).action is Action.REDUCE_LOAD:
                verdict: tuple[int, str] | None = (
                    +1,
                    f"out of memory: {type(error).__name__}: {error}",
                )
            else:
                verdict = self._verdict(now)
            if verdict is not None:
                self._move(*verdict, now)
            return self._level

    def _verdict(self, now: float) -> tuple[int, str] | None:
        """Which way to move (+1 down, -1 up) and why, or None to stay."""
        policy = self.policy
        calls, failures, p90 = self._window.stats()
        if calls < policy.min_calls:
            return None
        rate = failures / calls
        down, up = policy.degrade_at, policy.restore_below
        if rate >= down.error_rate:
            return +1, f"error rate {failures}/{calls} >= {down.error_rate:g}"
        if p90 >= down.latency:
            return +1, f"p90 latency {p90:.3g}s >= {down.latency:g}s"
        stayed = now - self._changed_at
        if stayed >= policy.dwell and rate <= up.error_rate and p90 <= up.latency:
            return -1, (
                f"healthy for {stayed:.3g}s: error rate {failures}/{calls}, p90 latency {p90:.3g}s"
            )
        return None

    def _move(self, step: int, reason: str, now: float) -> None:
        target = Level(min(max(self._level + step, Level.FULL), self.lowest))
        if target != self._level:
            self._set(target, reason, now)

    def _set(self, target: Level, reason: str, now: float) -> None:
        previous, self._level = self._level, target
        self._changed_at = now
        self._window.outcomes.clear()
        if self.journal is not None:
            self.journal.append(
                DegradationChanged(
                    time=now,
                    source=self.name,
                    from_level=previous.label,
                    to_level=target.label,
                    reason=reason,
                )
            )

    def force(self, level: Level, reason: str = "forced") -> None:
        """Move to ``level`` now (an event is recorded if it changes)."""
        with self._lock:
            if level != self._level:
                self._set(level, reason, self.clock.now())

    def reset(self) -> None:
        """Back to ``FULL`` with an empty window."""
        self.force(Level.FULL, "reset")
        with self._lock:
            self._window.outcomes.clear()

    def stats(self) -> tuple[int, int, float]:
        """``(calls, failures, p90 latency)`` in the current window."""
        with self._lock:
            self._window.expire(self.clock.now())
            return self._window.stats()

    # ------------------------------------------------------------------------ parameters

    @overload
    def adjust(self, params: Mapping[str, Any]) -> dict[str, Any]: ...
    @overload
    def adjust(self, params: D) -> D: ...
    def adjust(self, params: Any) -> Any:
        """``params`` lowered for the current level; the original is never changed.

        Takes any dataclass instance (e.g.
        :class:`~pytest_resilience.backends.base.GenerationParams`), returning a copy made
        with ``dataclasses.replace``, or a mapping, returning a new ``dict``. Only the fields
        it has are touched: ``max_tokens``, ``temperature``, ``model`` (set from ``models``
        when the degrader has some) and ``tools`` (a sequence, cut to the first N) or
        ``n_tools`` (a count). Raises ``TypeError`` for anything else.
        """
        if isinstance(params, Mapping):
            return {**params, **self._changes(params)}
        if dataclasses.is_dataclass(params) and not isinstance(params, type):
            current = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
            return dataclasses.replace(params, **self._changes(current))
        raise TypeError(f"adjust() takes a dataclass instance or a mapping, got {params!r}")

    def _changes(self, current: Mapping[str, Any]) -> dict[str, Any]:
        profile = self.profile
        changes: dict[str, Any] = {}
        tokens = current.get("max_tokens")
        if isinstance(tokens, int) and tokens > 0:
            changes["max_tokens"] = max(1, int(tokens * profile.token_scale))
        temperature = current.get("temperature")
        if profile.temperature is not None and isinstance(temperature, int | float):
            changes["temperature"] = min(temperature, profile.temperature)
        model = self.model
        if "model" in current and model is not None:
            changes["model"] = model
        if profile.tools is not None:
            tools = current.get("tools")
            if isinstance(tools, list | tuple):
                changes["tools"] = type(tools)(tools[: profile.tools])
            n_tools = current.get("n_tools")
            if isinstance(n_tools, int):
                changes["n_tools"] = min(n_tools, profile.tools)
        return changes

    def __repr__(self) -> str:
        return f"<Degrader {self.name!r} level={self._level.label}>"
