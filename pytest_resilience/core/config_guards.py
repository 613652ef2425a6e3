"""The policy file's sections that guard a call: ``[retry]``, ``[breakers.NAME]``,
``[cache]`` and ``[stream]``, each read through a
:class:`~pytest_resilience.core.config_read.Reader` and built on one clock and journal
(:mod:`pytest_resilience.core.config` puts them together).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from .backoff import Backoff, Jitter
from .breaker import CircuitBreaker
from .breaker_policy import ConsecutiveFailures, CountWindow, HalfOpen, TimeWindow, TripPolicy
from .cache import ResponseCache
from .retry import Retry, is_retryable, result_is_empty, result_is_none
from .stream import StreamGuard

if TYPE_CHECKING:
    from pathlib import Path

    from .clock import Clock
    from .config_read import Reader
    from .journal import Journal
    from .toml_lines import Path_

__all__ = ["REJECT", "Guards"]

_RETRY: Final = (
    *("on", "attempts", "base", "factor", "cap", "jitter", "budget"),
    *("on_result", "reraise", "name", "outcomes"),
)
#: The trip policy each of a breaker's trip keys belongs to.
_TRIP_KEYS: Final = {
    "failures": ("consecutive",),
    "size": ("count",),
    "window": ("time",),
    "rate": ("count", "time"),
    "min_calls": ("count", "time"),
}
_BREAKER: Final = (
    *("on", "exclude", "trip", *_TRIP_KEYS, "recovery", "probes", "successes"),
    *("slow_after", "outcomes"),
)
_CACHE: Final = ("name", "max_entries", "max_bytes", "max_age", "path")
_STREAM: Final = ("name", "first_token", "idle", "total", "on_stall", "max_chunks", "max_chars")
#: The named result checks of ``on_result`` and ``reject``.
REJECT: Final = {"none": result_is_none, "empty": result_is_empty}


class Guards:
    """Builds ``[retry]``, ``[breakers.NAME]``, ``[cache]`` and ``[stream]``."""

    def __init__(self, r: Reader, clock: Clock, journal: Journal | None) -> None:
        self.r, self.clock, self.journal = r, clock, journal

    def retry(self, raw: Any) -> Retry:
        r, at = self.r, ("retry",)
        conf = r.table(raw, at, _RETRY)
        on_raw = r.required(conf, at, "on", " (what is worth another try)")
        on = is_retryable if on_raw == "retryable" else r.exceptions(on_raw, (*at, "on"))
        backoff: dict[str, Any] = {}
        for key in ("base", "cap"):
            if key in conf:
                backoff[key] = r.duration(conf[key], (*at, key))
        if "factor" in conf:
            backoff["factor"] = r.number(conf["factor"], (*at, "factor"), 0, above=True)
        if "jitter" in conf:
            backoff["jitter"] = r.choice(conf["jitter"], (*at, "jitter"), [j.value for j in Jitter])
        given: dict[str, Any] = {}
        if "attempts" in conf:
            given["attempts"] = r.integer(conf["attempts"], (*at, "attempts"), 1)
        if "budget" in conf:
            given["budget"] = r.positive(conf["budget"], (*at, "budget"))
        if "on_result" in conf:
            rejects = r.choice(conf["on_result"], (*at, "on_result"), list(REJECT))
            given["on_result"] = REJECT[rejects]
        for key in ("reraise", "outcomes"):
            if key in conf:
                given[key] = r.boolean(conf[key], (*at, key))
        if "name" in conf:
            given["name"] = r.text(conf["name"], (*at, "name"))
        with r.refusals(at):
            return Retry(
                on=on,
                backoff=Backoff(**backoff),
                clock=self.clock,
                journal=self.journal,
                **given,
            )

    def breakers(self, raw: Any) -> dict[str, CircuitBreaker]:
        r = self.r
        if not isinstance(raw, dict):
            raise r.wrong(("breakers",), "a table of breakers ([breakers.NAME])", raw)
        out: dict[str, CircuitBreaker] = {}
        for name, conf in raw.items():
            at = ("breakers", name)
            r.text(name, at)
            out[name] = self.breaker(name, r.table(conf, at, _BREAKER), at)
        return out

    def breaker(self, name: str, conf: dict[str, Any], at: Path_) -> CircuitBreaker:
        r = self.r
        on = r.exceptions(r.required(conf, at, "on", " (what counts as a failure)"), (*at, "on"))
        trip = r.choice(
            conf.get("trip", "consecutive"), (*at, "trip"), ["consecutive", "count", "time"]
        )
        for key, trips in _TRIP_KEYS.items():
            if key in conf and trip not in trips:
                kinds = " or ".join(repr(t) for t in trips)
                raise r.error(
                    (*at, key),
                    f"{key!r} is for trip = {kinds}, and this breaker's trip is {trip!r}",
                )
        given: dict[str, Any] = {}
        if "exclude" in conf:
            given["exclude"] = r.exceptions(conf["exclude"], (*at, "exclude"))
        if "slow_after" in conf:
            given["slow_after"] = r.duration(conf["slow_after"], (*at, "slow_after"))
        if "outcomes" in conf:
            given["outcomes"] = r.boolean(conf["outcomes"], (*at, "outcomes"))
        recovery: dict[str, Any] = {}
        if "recovery" in conf:
            recovery["after"] = r.duration(conf["recovery"], (*at, "recovery"))
        for key in ("probes", "successes"):
            if key in conf:
                recovery[key] = r.integer(conf[key], (*at, key), 1)
        with r.refusals(at):
            return CircuitBreaker(
                name,
                on=on,
                trip=self._trip(trip, conf, at),
                recovery=HalfOpen(**recovery),
                clock=self.clock,
                journal=self.journal,
                **given,
            )

    def _trip(self, trip: str, conf: dict[str, Any], at: Path_) -> TripPolicy:
        r = self.r
        given: dict[str, Any] = {}
        if "rate" in conf:
            given["rate"] = r.number(conf["rate"], (*at, "rate"), 0, 1, above=True)
        if "min_calls" in conf:
            given["min_calls"] = r.integer(conf["min_calls"], (*at, "min_calls"), 1)
        if trip == "consecutive":
            if "failures" in conf:
                return ConsecutiveFailures(r.integer(conf["failures"], (*at, "failures"), 1))
            return ConsecutiveFailures()
        if trip == "count":
            if "size" in conf:
                given["size"] = r.integer(conf["size"], (*at, "size"), 1)
            return CountWindow(**given)
        if "window" in conf:
            given["seconds"] = r.positive(conf["window"], (*at, "window"))
        return TimeWindow(**given)

    def cache(self, raw: Any, folder: Path) -> ResponseCache:
        r, at = self.r, ("cache",)
        conf = r.table(raw, at, _CACHE)
        given: dict[str, Any] = {}
        if "name" in conf:
            given["name"] = r.text(conf["name"], (*at, "name"))
        for key in ("max_entries", "max_bytes"):
            if key in conf:
                given[key] = r.integer(conf[key], (*at, key), 1)
        if "max_age" in conf:
            given["max_age"] = r.positive(conf["max_age"], (*at, "max_age"))
        if "path" in conf:
            given["path"] = folder / r.text(conf["path"], (*at, "path"))
        with r.refusals(at):
            return ResponseCache(clock=self.clock, journal=self.journal, **given)

    def guard(self, raw: Any) -> StreamGuard:
        r, at = self.r, ("stream",)
        conf = r.table(raw, at, _STREAM)
        given: dict[str, Any] = {}
        for key in ("first_token", "idle", "total"):
            if key in conf:
                given[key] = r.duration(conf[key], (*at, key))
        for key in ("max_chunks", "max_chars"):
            if key in conf:
                given[key] = r.integer(conf[key], (*at, key), 1)
        if "on_stall" in conf:
            given["on_stall"] = r.choice(conf["on_stall"], (*at, "on_stall"), ["raise", "return"])
        if "name" in conf:
            given["name"] = r.text(conf["name"], (*at, "name"))
        return StreamGuard(clock=self.clock, journal=self.journal, **given)
