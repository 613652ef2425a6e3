"""Durations written with a unit: ``500ms``, ``30s``, ``2m``, ``1h``.

Two readers take them and share what a duration means: the fault spec grammar
(``faults.parser``: a value inside a spec, whose errors name their column) and the policy
files (:mod:`.config_read`: a whole value, whose errors name their line). Each finds the
number (digits, perhaps with a fraction) and the unit its own way, since each reports a
bad one in its own terms; the units and the seconds they stand for are decided here.
"""

from __future__ import annotations

from typing import Final

__all__ = ["UNITS", "seconds_of"]

#: The units of a duration, largest first, and what one of each is in seconds.
UNITS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def seconds_of(number: str, unit: str) -> float:
    """The seconds that ``number`` (digits, perhaps with a fraction) of ``unit`` (a key of
    :data:`UNITS`) stands for. Raises ``KeyError`` for another unit."""
    # Dividing by 1000 is exact where multiplying by 0.001 is not: 500ms is exactly 0.5.
    return float(number) / 1000 if unit == "ms" else float(number) * UNITS[unit]
