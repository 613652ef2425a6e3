"""The whole resilience policy from one file: :func:`load_policy` reads a TOML file (or
YAML, when PyYAML is installed), checks every key, and builds the components it
describes on one clock and journal::

    policy = load_policy("policy.toml", clock=clock, journal=journal,
                         steps={"daemon": daemon.generate})
    answer = policy.retry.call(policy.breakers["daemon"].call, ask, prompt)
    text = policy.fallback(prompt)

Sections (each optional; a section that is absent leaves its component None, a key that
is absent leaves the code's default): ``[retry]`` (:class:`~.retry.Retry` and its
:class:`~.backoff.Backoff`), ``[breakers.NAME]`` (one :class:`~.breaker.CircuitBreaker`
per name, with its trip policy and :class:`~.breaker_policy.HalfOpen`), ``[fallback]``
(a :class:`~.fallback.Fallback` chain), ``[degrade]`` (a :class:`~.degrade.Degrader`),
``[alerts]`` (:class:`~.alerts.Alerts`), ``[cache]`` (a :class:`~.cache.ResponseCache`),
``[stream]`` (a :class:`~.stream.StreamGuard`) and ``[client]`` (what
``ResilientClient.from_policy`` takes besides them). The key reference is in the docs
(``docs/core.md``, "The policy from one file").

Fallback steps name their function two ways: a name the caller passes in ``steps=``
(looked up at load), or a ``"module:qualname"`` path. A path is imported on the step's
first call, so loading a policy imports no application code, unless the chain says
``import = "at_load"``: then every path is imported at load, and one that cannot be is an
error of the file at its line.

The alerts of ``[alerts]`` go where the code says: ``on_alert=`` (a callable, or a list
of them) is given every :class:`~.alerts.Alert` that fires, as ``Alerts(on_alert=...)``
is; a file without ``[alerts]`` fires none, and calls none.

Every problem is a :class:`~.config_read.PolicyError` naming the file, the line, the
dotted key and what was expected; settings the core refuses together (a degrade policy
whose ``restore_below`` is not under ``degrade_at``) are errors of the file too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from .clock import Clock, SystemClock
from .config_fallbacks import Fallbacks
from .config_guards import Guards
from .config_read import PolicyError, Reader, names_near
from .config_yaml import parse_yaml
from .status import Services
from .toml_lines import decode, parse_toml, read_file

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable, Mapping

    from .alerts import Alert, Alerts
    from .breaker import CircuitBreaker
    from .cache import ResponseCache
    from .degrade import Degrader
    from .fallback import Fallback
    from .journal import Journal
    from .retry import Retry
    from .stream import StreamGuard
    from .toml_lines import Path_

    #: What ``on_alert=`` takes: one callback, or several.
    OnAlert: TypeAlias = Callable[[Alert], object] | Iterable[Callable[[Alert], object]]

__all__ = ["PolicyError", "ResiliencePolicy", "load_policy", "policy_from_mapping"]

SECTIONS: Final = (
    *("version", "retry", "breakers", "fallback", "degrade", "alerts", "cache", "stream"),
    "client",
)
_CLIENT: Final = ("name", "timeout", "slow_after", "policy", "static", "breaker")
#: The suffixes read as YAML; any other suffix but ``.toml`` is refused.
YAML_SUFFIXES: Final = (".yaml", ".yml")


@dataclass(frozen=True, slots=True, eq=False)
class ResiliencePolicy:
    """The components a policy file describes, built on one clock and journal; a section
    the file does not have is None (``breakers``: empty). ``client``: the keyword
    arguments of ``[client]`` for ``ResilientClient`` (see :meth:`client_arguments`)."""

    source: str
    clock: Clock
    journal: Journal | None = None
    retry: Retry | None = None
    breakers: Mapping[str, CircuitBreaker] = field(default_factory=lambda: MappingProxyType({}))
    fallback: Fallback | None = None
    degrader: Degrader | None = None
    alerts: Alerts | None = None
    cache: ResponseCache | None = None
    guard: StreamGuard | None = None
    client: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def client_arguments(self) -> dict[str, Any]:
        """The keyword arguments of a ``ResilientClient`` built from this policy: the
        ``[client]`` settings, its breaker (``[client] breaker``, default the breaker named
        ``daemon`` if there is one), the retry, stream guard, cache and degrader, the clock
        and the journal; a component the file does not describe is left out, so the
        client's own default stays."""
        given: dict[str, Any] = {
            "retry": self.retry,
            "guard": self.guard,
            "cache": self.cache,
            "degrader": self.degrader,
        }
        arguments = {k: v for k, v in given.items() if v is not None}
        arguments.update(self.client)
        arguments.update(clock=self.clock, journal=self.journal)
        return arguments

    def services(self, **settings: Any) -> Services:
        """A :class:`~.status.Services` with one service per breaker (by its name), on the
        policy's clock and journal; ``settings`` go to ``Services`` (``window=``, ...)."""
        services = Services(clock=self.clock, journal=self.journal, **settings)
        for name, breaker in self.breakers.items():
            services.register(name, breaker=breaker)
        return services


def read_document(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], Mapping[Path_, int]]:
    """The document of a policy file and the line of every key in it, by path: TOML for
    ``.toml``, YAML for ``.yaml`` and ``.yml`` (PyYAML must be installed). Raises
    :class:`PolicyError` for a missing or unreadable file, another suffix, text that is not
    UTF-8, TOML or YAML that does not parse (at the line the parser names), or a YAML
    document that is not a mapping."""
    where = str(path)
    suffix = Path(path).suffix.lower()
    if suffix != ".toml" and suffix not in YAML_SUFFIXES:
        raise PolicyError(
            where, 1, "", f"unknown policy file type {suffix or '(none)'!r}: .toml, .yaml or .yml"
        )
    data = read_file(path, what="the policy file", error=PolicyError)
    source = decode(data, where, error=PolicyError)
    if suffix == ".toml":
        document, scan = parse_toml(source, where, error=PolicyError)
        return document, scan.lines
    return parse_yaml(source, where)


def load_policy(
    path: str | os.PathLike[str],
    *,
    clock: Clock | None = None,
    journal: Journal | None = None,
    steps: Mapping[str, Callable[..., Any]] | None = None,
    on_alert: OnAlert | None = None,
) -> ResiliencePolicy:
    """Read the policy file ``path`` (``.toml``; ``.yaml``/``.yml`` with PyYAML) and build
    its components on ``clock`` (default: one ``SystemClock``) and ``journal``; the
    alerts, if any, are attached to ``journal``. ``steps``: the functions fallback steps
    may name (``call = "daemon"``). ``on_alert``: a callable, or a list of them, given
    each alert of ``[alerts]`` that fires. A cache's relative ``path`` is found from the
    policy file's folder. Raises :class:`PolicyError` for any problem of the file (see the
    module docs), ``TypeError`` for an ``on_alert`` that is not callable."""
    callbacks = _callbacks(on_alert)
    data, lines = read_document(path)
    return _build(
        Reader(str(path), lines),
        data,
        folder=Path(path).parent,
        clock=clock,
        journal=journal,
        steps=steps,
        on_alert=callbacks,
    )


def policy_from_mapping(
    data: Mapping[str, Any],
    *,
    source: str = "<policy>",
    lines: Mapping[Path_, int] | None = None,
    folder: str | os.PathLike[str] = ".",
    clock: Clock | None = None,
    journal: Journal | None = None,
    steps: Mapping[str, Callable[..., Any]] | None = None,
    on_alert: OnAlert | None = None,
) -> ResiliencePolicy:
    """:func:`load_policy` for a policy already read: ``source`` names it in errors,
    ``lines`` gives the line of each key path (None: errors have no line), ``folder`` is
    where a cache's relative path is found."""
    return _build(
        Reader(source, lines),
        dict(data),
        folder=Path(folder),
        clock=clock,
        journal=journal,
        steps=steps,
        on_alert=_callbacks(on_alert),
    )


def _callbacks(on_alert: OnAlert | None) -> tuple[Callable[[Alert], object], ...]:
    """``on_alert`` as a tuple of callbacks. Raises ``TypeError`` naming what is not
    callable (a string is not a list of callbacks)."""
    if on_alert is None:
        return ()
    if callable(on_alert):
        return (on_alert,)
    given: object = on_alert
    if isinstance(given, str | bytes) or not hasattr(given, "__iter__"):
        raise TypeError(
            f"on_alert must be a callable or a list of callables, got {type(on_alert).__name__}"
        )
    callbacks = tuple(on_alert)
    for index, callback in enumerate(callbacks):
        if not callable(callback):
            raise TypeError(
                f"on_alert[{index}] must be callable, got {type(callback).__name__} "
                f"({callback!r:.40})"
            )
    return callbacks


def _build(
    r: Reader,
    data: dict[str, Any],
    *,
    folder: Path,
    clock: Clock | None,
    journal: Journal | None,
    steps: Mapping[str, Callable[..., Any]] | None,
    on_alert: tuple[Callable[[Alert], object], ...],
) -> ResiliencePolicy:
    r.table(data, (), SECTIONS)
    if "version" in data and (data["version"] != 1 or isinstance(data["version"], bool)):
        raise r.error(("version",), f"unknown version {data['version']!r} (this reader knows 1)")
    clock = clock if clock is not None else SystemClock()
    build, more = Guards(r, clock, journal), Fallbacks(r, clock, journal)
    cache = build.cache(data["cache"], folder) if "cache" in data else None
    breakers = build.breakers(data["breakers"]) if "breakers" in data else {}
    policy = ResiliencePolicy(
        source=r.where,
        clock=clock,
        journal=journal,
        retry=build.retry(data["retry"]) if "retry" in data else None,
        breakers=MappingProxyType(breakers),
        fallback=more.fallback(data["fallback"], cache, steps) if "fallback" in data else None,
        degrader=more.degrader(data["degrade"]) if "degrade" in data else None,
        alerts=more.alerts(data["alerts"], on_alert) if "alerts" in data else None,
        cache=cache,
        guard=build.guard(data["stream"]) if "stream" in data else None,
        client=MappingProxyType(_client(r, data.get("client", {}), breakers)),
    )
    if policy.alerts is not None and journal is not None:
        policy.alerts.attach(journal)
    return policy


def _client(r: Reader, raw: Any, breakers: Mapping[str, CircuitBreaker]) -> dict[str, object]:
    at = ("client",)
    conf = r.table(raw, at, _CLIENT)
    given: dict[str, object] = {}
    if "name" in conf:
        given["name"] = r.text(conf["name"], (*at, "name"))
    if "timeout" in conf:
        given["timeout"] = r.duration(conf["timeout"], (*at, "timeout"), none=True)
    if "slow_after" in conf:
        given["slow_after"] = r.duration(conf["slow_after"], (*at, "slow_after"))
    if "policy" in conf:
        given["policy"] = r.choice(conf["policy"], (*at, "policy"), ["raise", "never_fail"])
    if "static" in conf:
        given["static"] = r.text(conf["static"], (*at, "static"), line=False)
    if "breaker" in conf:
        name = r.text(conf["breaker"], (*at, "breaker"))
        if name not in breakers:
            known = ", ".join(repr(b) for b in breakers) or "none"
            hint = names_near(name, list(breakers))
            raise r.error(
                (*at, "breaker"),
                f"no breaker named {name!r}{hint} (the file's breakers: {known})",
            )
        given["breaker"] = breakers[name]
    elif "daemon" in breakers:
        given["breaker"] = breakers["daemon"]
    return given
