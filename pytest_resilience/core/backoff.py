"""The waits between retry attempts: exponential, jittered, capped.

Before retry *n* (after the *n*-th attempt failed), with ``d = min(cap, base * factor**(n-1))``
(overflow-safe: any attempt number, even 10,000, gives ``cap``):

=================  ==============================================================
``"none"``         ``d``
``"full"``         ``U(0, d)``
``"equal"``        ``d/2 + U(0, d/2)``
``"decorrelated"`` ``min(cap, U(base, 3 * prev))``, ``prev`` the previous delay
                   (``base`` at first); ignores ``factor``
``"proportional"`` ``d * U(0.8, 1.2)``
=================  ==============================================================

and then the cap is applied again, after jitter: ``delay = min(cap, jittered)``.
:class:`~pytest_resilience.core.retry.Retry` takes a :class:`Backoff`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random

__all__ = ["Backoff", "Jitter"]


class Jitter(enum.StrEnum):
    """How the exponential delay ``d`` is randomised (formulas in the module docstring)."""

    NONE = "none"  # d
    FULL = "full"  # U(0, d)
    EQUAL = "equal"  # d/2 + U(0, d/2)
    DECORRELATED = "decorrelated"  # min(cap, U(base, 3 * prev))
    PROPORTIONAL = "proportional"  # d * U(0.8, 1.2)


# module constants: enum member lookups on the class are slow on the retry path
_NONE, _FULL, _EQUAL, _DECORRELATED = Jitter.NONE, Jitter.FULL, Jitter.EQUAL, Jitter.DECORRELATED


@dataclass(frozen=True, slots=True)
class Backoff:
    """The shape of the waits between attempts: ``base * factor**(n-1)``, jittered, capped.

    Raises ``ValueError`` for a negative or non-finite ``base``/``cap``, a ``factor`` that is
    not positive and finite, or an unknown jitter name.
    """

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    jitter: Jitter | str = Jitter.FULL

    def __post_init__(self) -> None:
        for name in ("base", "cap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Backoff {name} must be finite and >= 0, got {value!r}")
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"Backoff factor must be finite and > 0, got {self.factor!r}")
        try:
            jitter = Jitter(self.jitter)
        except ValueError:
            known = ", ".join(j.value for j in Jitter)
            raise ValueError(f"unknown jitter {self.jitter!r}; known: {known}") from None
        object.__setattr__(self, "jitter", jitter)
        # floats, so that factor**n overflows into OverflowError instead of a giant int
        for name in ("base", "factor", "cap"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def fixed(cls, seconds: float) -> Backoff:
        """The same wait every time, no jitter. ``Backoff.fixed(0)`` never sleeps."""
        return cls(base=seconds, factor=1.0, cap=seconds, jitter=Jitter.NONE)

    def exponential(self, n: int) -> float:
        """``min(cap, base * factor**(n-1))`` for retry ``n`` (from 1), safe for any ``n``."""
        if self.base == 0.0 or self.cap == 0.0:
            return 0.0
        try:
            d = self.base * self.factor ** (n - 1)
        except OverflowError:
            return self.cap
        return d if d < self.cap else self.cap  # also maps inf to cap

    def delay(self, n: int, rng: random.Random, prev: float | None = None) -> float:
        """The wait before retry ``n`` (from 1). ``prev`` is the previous delay (decorrelated)."""
        if self.base == 0.0 or self.cap == 0.0:  # every strategy gives 0: skip the rng
            return 0.0
        jitter = self.jitter
        if jitter is _DECORRELATED:
            low = self.base
            high = 3.0 * (low if prev is None else prev)
            return min(self.cap, rng.uniform(low, high) if high > low else low)
        d = self.exponential(n)
        if d == 0.0 or jitter is _NONE:
            return d
        if jitter is _FULL:
            value = rng.uniform(0.0, d)
        elif jitter is _EQUAL:
            value = d / 2 + rng.uniform(0.0, d / 2)
        else:  # PROPORTIONAL
            value = d * rng.uniform(0.8, 1.2)
        return min(self.cap, value)
