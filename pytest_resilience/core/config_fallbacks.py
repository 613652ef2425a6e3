"""The policy file's sections for what happens when a call fails: ``[fallback]`` (the
chain, its steps named by the caller or by import path), ``[degrade]`` and ``[alerts]``,
each read through a :class:`~pytest_resilience.core.config_read.Reader` and built on one
clock and journal (:mod:`pytest_resilience.core.config` puts them together).
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
from typing import TYPE_CHECKING, Any, Final

from .alerts import AlertRule, Alerts, BreakerOpened, ErrorRate, FailureStreak
from .config_read import check_import_path, names_near
from .degrade import DEFAULT_PROFILES, DegradePolicy, Degrader, Level, Limits
from .fallback import CachedStep, Fallback, FallbackStep
from .retry import result_is_empty, result_is_none

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .alerts import Alert
    from .cache import ResponseCache
    from .clock import Clock
    from .config_read import Reader
    from .journal import Journal
    from .toml_lines import Path_

__all__ = ["Fallbacks"]

_FALLBACK: Final = ("name", "on", "reject", "import", "steps")
_STEP: Final = ("name", "call", "cache", "static", "on", "reject")
_STEP_KINDS: Final = ("call", "cache", "static")
_DEGRADE: Final = (
    *("name", "models", "lowest", "window", "min_calls", "dwell"),
    *("degrade_at", "restore_below", "profiles"),
)
_LIMITS: Final = ("error_rate", "latency")
_PROFILE: Final = ("token_scale", "model", "temperature", "tools")
_LEVELS: Final = tuple(level.label for level in Level)
_ALERTS: Final = ("name", "cooldown", "rules")
#: The rule each of an alert rule's own keys belongs to.
_RULE_KEYS: Final = {
    "threshold": "consecutive_failures",
    "errors": "error_rate",
    "window": "error_rate",
}
_RULE: Final = ("rule", "name", "source", "cooldown", *_RULE_KEYS)
_RULES: Final = ("consecutive_failures", "error_rate", "breaker_open")
_REJECT: Final = {"none": result_is_none, "empty": result_is_empty}


class Fallbacks:
    """Builds ``[fallback]``, ``[degrade]`` and ``[alerts]``."""

    def __init__(self, r: Reader, clock: Clock, journal: Journal | None) -> None:
        self.r, self.clock, self.journal = r, clock, journal

    def fallback(
        self,
        raw: Any,
        cache: ResponseCache | None,
        steps: Mapping[str, Callable[..., Any]] | None,
    ) -> Fallback:
        r, at = self.r, ("fallback",)
        conf = r.table(raw, at, _FALLBACK)
        on = r.exceptions(r.required(conf, at, "on", " (what a failed step raises)"), (*at, "on"))
        reject = None
        if "reject" in conf:
            reject = _REJECT[r.choice(conf["reject"], (*at, "reject"), list(_REJECT))]
        now = False
        if "import" in conf:
            now = (
                r.choice(conf["import"], (*at, "import"), ["on_first_call", "at_load"]) == "at_load"
            )
        name = r.text(conf["name"], (*at, "name")) if "name" in conf else "fallback"
        raws = r.tables(r.required(conf, at, "steps", " ([[fallback.steps]])"), (*at, "steps"))
        made: list[FallbackStep | CachedStep] = []
        seen: dict[str, int] = {}
        for index, step_raw in enumerate(raws):
            where = (*at, "steps", index)
            step = self._step(r.table(step_raw, where, _STEP), where, cache, steps or {}, now=now)
            if step.name in seen:
                raise r.error(
                    (*where, "name") if "name" in step_raw else where,
                    f"a second step named {step.name!r} (the first is step {seen[step.name] + 1}); "
                    "give each step its own name",
                )
            seen[step.name] = index
            made.append(step)
        with r.refusals(at):
            return Fallback(
                name, made, on=on, reject=reject, clock=self.clock, journal=self.journal
            )

    def _step(
        self,
        conf: dict[str, Any],
        at: Path_,
        cache: ResponseCache | None,
        steps: Mapping[str, Callable[..., Any]],
        *,
        now: bool,
    ) -> FallbackStep | CachedStep:
        r = self.r
        kinds = [k for k in _STEP_KINDS if k in conf]
        if len(kinds) != 1:
            what = "none" if not kinds else " and ".join(repr(k) for k in kinds)
            raise r.error(at, f"a step has one of 'call', 'cache' or 'static', got {what}")
        kind = kinds[0]
        name = r.text(conf["name"], (*at, "name")) if "name" in conf else None
        if kind == "cache":
            if r.boolean(conf["cache"], (*at, "cache")) is not True:
                raise r.error(
                    (*at, "cache"), "a cache step says cache = true (or leave the step out)"
                )
            if cache is None:
                raise r.error(
                    (*at, "cache"), "a cache step answers from [cache]: the file has none"
                )
            for key in ("on", "reject"):
                if key in conf:
                    raise r.error((*at, key), f"a cache step has no {key!r}: it fails on a miss")
            return CachedStep(cache, name=name or "cache")
        on = r.exceptions(conf["on"], (*at, "on")) if "on" in conf else None
        reject = None
        if "reject" in conf:
            reject = _REJECT[r.choice(conf["reject"], (*at, "reject"), list(_REJECT))]
        if kind == "static":
            text = r.text(conf["static"], (*at, "static"), line=False)
            return FallbackStep(name or "static", _Static(text), on=on, reject=reject)
        call = r.text(conf["call"], (*at, "call"))
        fn: Callable[..., Any]
        if ":" in call:
            problem = check_import_path(call)
            if problem is not None:
                raise r.error((*at, "call"), problem)
            imported = _Imported(call, f"{r.where}: fallback step {name or call!r}")
            if now:
                try:
                    imported.resolve()
                except ImportError as exc:
                    raise r.error((*at, "call"), str(exc)) from None
            fn, default = imported, call.rpartition(":")[2].rpartition(".")[2]
        else:
            found = steps.get(call)
            if found is None:
                if not steps:
                    why = "the caller passed no steps (load_policy(..., steps={...}))"
                else:
                    why = "the caller's steps are " + ", ".join(repr(k) for k in sorted(steps))
                hint = names_near(call, sorted(steps))
                raise r.error(
                    (*at, "call"),
                    f"no step function named {call!r}{hint}: {why}; or write a "
                    "'module:function' path",
                )
            fn, default = found, call
        return FallbackStep(name or default, fn, on=on, reject=reject)

    def degrader(self, raw: Any) -> Degrader:
        r, at = self.r, ("degrade",)
        conf = r.table(raw, at, _DEGRADE)
        defaults = DegradePolicy()
        given: dict[str, Any] = {}
        for key in ("degrade_at", "restore_below"):
            if key in conf:
                limits = r.table(conf[key], (*at, key), _LIMITS)
                current: Limits = getattr(defaults, key)
                rate, latency = current.error_rate, current.latency
                if "error_rate" in limits:
                    rate = r.number(limits["error_rate"], (*at, key, "error_rate"), 0, 1)
                if "latency" in limits:
                    found = r.duration(limits["latency"], (*at, key, "latency"))
                    assert found is not None
                    latency = found
                given[key] = Limits(error_rate=rate, latency=latency)
        if "window" in conf:
            given["window"] = r.positive(conf["window"], (*at, "window"))
        if "dwell" in conf:
            given["dwell"] = r.duration(conf["dwell"], (*at, "dwell"))
        if "min_calls" in conf:
            given["min_calls"] = r.integer(conf["min_calls"], (*at, "min_calls"), 1)
        options: dict[str, Any] = {}
        if "name" in conf:
            options["name"] = r.text(conf["name"], (*at, "name"))
        if "models" in conf:
            options["models"] = r.texts(conf["models"], (*at, "models"))
        if "lowest" in conf:
            options["lowest"] = Level[
                r.choice(conf["lowest"], (*at, "lowest"), _LEVELS[1:]).upper()
            ]
        if "profiles" in conf:
            options["profiles"] = self._profiles(conf["profiles"], (*at, "profiles"))
        with r.refusals(at):
            policy = DegradePolicy(**given)
        return Degrader(policy=policy, clock=self.clock, journal=self.journal, **options)

    def _profiles(self, raw: Any, at: Path_) -> dict[Level, Any]:
        r = self.r
        profiles: dict[Level, Any] = {}
        for label, conf in r.table(raw, at, _LEVELS).items():
            where = (*at, label)
            table = r.table(conf, where, _PROFILE)
            given: dict[str, Any] = {}
            if "token_scale" in table:
                given["token_scale"] = r.number(
                    table["token_scale"], (*where, "token_scale"), 0, above=True
                )
            if "temperature" in table:
                given["temperature"] = r.number(table["temperature"], (*where, "temperature"), 0)
            for key in ("model", "tools"):
                if key in table:
                    given[key] = r.integer(table[key], (*where, key), 0)
            level = Level[label.upper()]
            profiles[level] = dataclasses.replace(DEFAULT_PROFILES[level], **given)
        return profiles

    def alerts(self, raw: Any, on_alert: tuple[Callable[[Alert], object], ...] = ()) -> Alerts:
        """``[alerts]``: the rules, given to an :class:`Alerts` that calls ``on_alert``."""
        r, at = self.r, ("alerts",)
        conf = r.table(raw, at, _ALERTS)
        cooldown = r.duration(conf["cooldown"], (*at, "cooldown")) if "cooldown" in conf else None
        rules: list[AlertRule] = []
        seen: dict[str, int] = {}
        for index, rule_raw in enumerate(
            r.tables(conf["rules"], (*at, "rules")) if "rules" in conf else ()
        ):
            where = (*at, "rules", index)
            rule = self._rule(r.table(rule_raw, where, _RULE), where, cooldown)
            if rule.name in seen:
                raise r.error(
                    (*where, "name") if "name" in rule_raw else where,
                    f"a second rule named {rule.name!r} (the first is rule {seen[rule.name] + 1}); "
                    "give each rule its own name",
                )
            seen[rule.name] = index
            rules.append(rule)
        name = r.text(conf["name"], (*at, "name")) if "name" in conf else "alerts"
        return Alerts(*rules, clock=self.clock, on_alert=on_alert, name=name)

    def _rule(self, conf: dict[str, Any], at: Path_, cooldown: float | None) -> AlertRule:
        r = self.r
        rule = r.choice(
            r.required(conf, at, "rule", " (which rule this is)"), (*at, "rule"), _RULES
        )
        for key, owner in _RULE_KEYS.items():
            if key in conf and owner != rule:
                raise r.error(
                    (*at, key), f"{key!r} is for rule = {owner!r}, and this rule is {rule!r}"
                )
        given: dict[str, Any] = {}
        if "name" in conf:
            given["name"] = r.text(conf["name"], (*at, "name"))
        if "source" in conf:
            given["source"] = r.text(conf["source"], (*at, "source"))
        if "cooldown" in conf:
            given["cooldown"] = r.duration(conf["cooldown"], (*at, "cooldown"))
        elif cooldown is not None:
            given["cooldown"] = cooldown
        if rule == "consecutive_failures":
            threshold = r.integer(
                r.required(conf, at, "threshold", " (failures in a row)"), (*at, "threshold"), 1
            )
            return FailureStreak(threshold, **given)
        if rule == "error_rate":
            errors = r.integer(
                r.required(conf, at, "errors", " (errors within the window)"), (*at, "errors"), 1
            )
            window = r.positive(r.required(conf, at, "window", " (seconds)"), (*at, "window"))
            return ErrorRate(errors, window, **given)
        return BreakerOpened(**given)


class _Static:
    """A fallback step that answers with fixed text, whatever it is asked."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, *args: object, **kwargs: object) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<static answer {self.text[:30]!r}>"


class _Imported:
    """A fallback step named by a ``"module:qualname"`` path: imported by :meth:`resolve`,
    at its first call unless the chain imports at load."""

    __slots__ = ("_fn", "_lock", "path", "where")

    def __init__(self, path: str, where: str) -> None:
        self.path, self.where = path, where
        self._fn: Callable[..., Any] | None = None
        self._lock = threading.Lock()

    def resolve(self) -> Callable[..., Any]:
        """The function the path names. Raises ``ImportError`` ("cannot import ...") when
        the module cannot be imported, lacks the name, or it is not callable."""
        with self._lock:
            if self._fn is not None:
                return self._fn
            module_name, _, qualname = self.path.partition(":")
            try:
                value: Any = importlib.import_module(module_name)
                for part in qualname.split("."):
                    value = getattr(value, part)
            except (ImportError, AttributeError) as exc:
                raise ImportError(f"cannot import {self.path!r}: {exc}") from exc
            if not callable(value):
                raise ImportError(
                    f"cannot import {self.path!r}: it is {type(value).__name__}, not a function"
                )
            fn: Callable[..., Any] = value
            self._fn = fn
            return fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = self._fn
        if fn is None:
            try:
                fn = self.resolve()
            except ImportError as exc:  # the policy's mistake, named where it is written
                raise ImportError(f"{self.where}: {exc}") from exc.__cause__
        return fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<fallback step {self.path!r}>"
