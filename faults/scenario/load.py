"""Loading a scenario: :func:`load`, :func:`loads` and :func:`spec_of` read a file, check it
against the schema, and build the :class:`Scenario`: its target (a callable or factory
imported now), its parsed fault spec, its steps and steady-state probe, each checked against
what the target can do, and its resilience tables, each built once so that the core's own
refusals are errors of the file. Every problem is a :class:`ScenarioError` at its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from faults.parser import parse
from faults.scenario.callables import (
    _check_arguments,
    _check_callable_tables,
    _lookup,
    _NotFound,
)
from faults.scenario.model import _PARTS, Scenario, Step, Target
from faults.scenario.names import _check_exception_names, _placeholder
from faults.scenario.policies import _Policies
from faults.scenario.reading import _decode, _line_of, _read, _toml
from faults.scenario.schema import (
    _SCHEMA,
    CALL_OP,
    DAEMON_OPS,
    MODEL_OPS,
    _Checker,
    _kind,
)
from faults.spec import Spec, SpecError
from faults.target import address_of
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Mapping

    from faults.scenario.reading import Path_


def load(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate a scenario file. Raises :class:`ScenarioError` for any problem:
    an unreadable file, one that is not UTF-8, bad TOML, nesting deeper than
    :data:`MAX_DEPTH`, an unknown key, a wrong type, a value over its cap, a missing
    required key, an unknown version, a malformed fault spec (its caret included), a
    malformed exception name, or a step the target cannot do.

    A ``callable`` or ``factory`` target is imported now (a wrong path is an error of the
    file); the modules of dotted exception names (``on``, ``errors``) are not: they are
    imported when the scenario runs."""
    return _parse(_read(path), Path(path), str(path))


def spec_of(path: str | os.PathLike[str]) -> Spec:
    """The ``[faults] spec`` of a scenario file, for ``--inject-faults FILE.toml``: the file
    is read as :func:`load` reads it (UTF-8, TOML, nesting) but only its ``[faults]`` table
    is checked, and nothing is imported; an empty spec when it has none. Any problem is a
    :class:`ScenarioError` naming the file, the line and the key."""
    where = str(path)
    data, scan = _toml(_decode(_read(path), where), where)
    checker = _Checker(where, scan.lines)
    faults = data.get("faults", {})
    checker.value(faults, _SCHEMA.fields["faults"], ("faults",))
    try:
        return parse(faults.get("spec", ""))
    except SpecError as exc:
        raise checker.error(("faults", "spec"), f"bad fault spec: {exc}") from None


def loads(source: str | bytes, path: str | os.PathLike[str] = "scenario.toml") -> Scenario:
    """:func:`load` for a scenario's text: ``path`` names it in messages, and is where a
    relative model path is found and what scopes its seeds (its file name), as a file's."""
    data = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    return _parse(data, Path(path), str(path))


def _parse(content: bytes, file: Path, where: str) -> Scenario:
    source = _decode(content, where)
    data, scan = _toml(source, where)
    lines = scan.lines
    checker = _Checker(where, lines)
    shorthand = isinstance(data.get("target"), str)
    if shorthand:  # target = "myapp.chat:answer": a callable target in one line
        data["target"] = {"callable": data["target"]}
    checker.table(data, _SCHEMA, ())
    if data["version"] != 1:
        raise checker.error(
            ("version",), f"unknown version {data['version']} (this reader knows 1)"
        )

    target, function = _target(checker, data.get("target", {}), shorthand=shorthand)

    spec = _faults(checker, data.get("faults", {}).get("spec", ""), target)

    resilience = data.get("resilience", {})
    _check_names(checker, resilience, ("resilience",))
    expect = data.get("expect", {})
    if target.callable is not None:
        _check_callable_tables(checker, resilience, expect)
    checkpoint = resilience.get("checkpoint", {})
    if checkpoint.get("killed_after", 0) >= checkpoint.get("parts", _PARTS):
        raise checker.error(
            ("resilience", "checkpoint", "killed_after"),
            f"killed_after must be less than parts ({checkpoint.get('parts', _PARTS)}): "
            "a job killed after its last checkpoint has nothing left to resume",
        )
    steps = tuple(_step(checker, raw, ("steps", i)) for i, raw in enumerate(data["steps"]))
    for i, step in enumerate(steps):
        _check_step(checker, target, resilience, step, ("steps", i))
        if function is not None and step.op == CALL_OP:
            raw = data["steps"][i]
            _check_arguments(checker, step, ("steps", i), target=target, function=function, raw=raw)
    probe = None
    if "steady_state" in data:
        probe = _step(checker, data["steady_state"], ("steady_state",))
        _check_step(checker, target, resilience, probe, ("steady_state",))
        if function is not None and probe.op == CALL_OP:
            raw = data["steady_state"]
            _check_arguments(
                checker, probe, ("steady_state",), target=target, function=function, raw=raw
            )
    return Scenario(
        path=file,
        title=data["title"],
        seed=data.get("seed", 0),
        clock=data.get("clock", "virtual"),
        target=target,
        faults=spec,
        steps=steps,
        expect=expect,
        resilience=resilience,
        steady_state=probe,
        version=data["version"],
        source=source,
        lines=lines,
    )


def _faults(checker: _Checker, spec_text: str, target: Target) -> Spec:
    """The ``[faults] spec``, parsed; its daemon sites need a daemon to act on."""
    try:
        spec = parse(spec_text)
    except SpecError as exc:
        raise checker.error(("faults", "spec"), f"bad fault spec: {exc}") from None
    daemon_sites = {e.site.target for e in spec if e.site.family == "daemon"}
    if daemon_sites and not target.has_daemon and target.daemon_url is None:
        own = target.client in ("callable", "factory")
        raise checker.error(
            ("faults", "spec"),
            f"daemon sites need a daemon target, not {target.client!r}"
            + ("; name your own server with [target] daemon_url" if own else ""),
        )
    if "process" in daemon_sites and not target.has_daemon:
        raise checker.error(
            ("faults", "spec"),
            "daemon.process acts on a daemon the scenario starts (client = 'daemon' or "
            "'resilient'); daemon_url gives only an address",
        )
    return spec


def _check_names(checker: _Checker, resilience: Mapping[str, Any], at: Path_) -> None:
    """Exception names must be well formed, and the policies must build, now rather than
    halfway through a run: each problem is a ScenarioError at its line. The modules of
    dotted names are not imported (:func:`_resolve_names` does it when the scenario runs)."""
    for section in ("retry", "breaker"):
        names = resilience.get(section, {}).get("on", ())
        _check_exception_names(checker, names, (*at, section, "on"))
    policies = _Policies(Target(), VirtualClock(), Journal(), 0, "", resolve=_placeholder)
    builders: dict[str, Callable[[Mapping[str, Any]], object]] = {
        "retry": policies.retry,
        "breaker": policies.breaker,
        "stream": policies.guard,
        "degrade": policies.degrader,
    }
    for section, build in builders.items():
        if section in resilience:
            try:
                build(resilience[section])
            except ValueError as exc:
                raise checker.error((*at, section), str(exc)) from None


def _step(checker: _Checker, raw: Mapping[str, Any], at: Path_) -> Step:
    resilience = raw.get("resilience", {})
    _check_names(checker, resilience, (*at, "resilience"))
    op = raw["op"]
    args: tuple[Any, ...] = ()
    if op == CALL_OP:
        if "args" in raw and "prompt" in raw:
            raise checker.error(
                (*at, "prompt"), "give args or prompt, not both (prompt is the first argument)"
            )
        if "max_tokens" in raw:
            raise checker.error((*at, "max_tokens"), "max_tokens is for model ops, not call")
        args = tuple(raw["args"]) if "args" in raw else (raw["prompt"],) if "prompt" in raw else ()
    else:
        for key in ("args", "kwargs"):
            if key in raw:
                raise checker.error(
                    (*at, key), f"{key} is for op = 'call' (a callable target), not {op!r}"
                )
    return Step(
        op=op,
        prompt=raw.get("prompt", "Once upon a time"),
        repeat=raw.get("repeat", 1),
        seconds=float(raw.get("seconds", 0.0)),
        max_tokens=raw.get("max_tokens"),
        resilience=resilience,
        line=_line_of(checker.lines, (*at, "op")),
        args=args,
        kwargs=raw.get("kwargs", {}),
        status=raw.get("status"),
    )


def _check_step(
    checker: _Checker, target: Target, resilience: Mapping[str, Any], step: Step, at: Path_
) -> None:
    op_at = (*at, "op")
    if step.op == CALL_OP and target.callable is None:
        raise checker.error(
            op_at, "call needs a callable target ([target] callable = 'module:function')"
        )
    if target.callable is not None and step.op in MODEL_OPS:
        raise checker.error(
            op_at, f"{step.op} needs a model target; the steps of a callable target use op = 'call'"
        )
    if target.callable is not None and "stream" in step.resilience:
        raise checker.error(
            (*at, "resilience", "stream"), "a callable target takes a per-step retry only"
        )
    if step.op in DAEMON_OPS and not target.has_daemon:
        raise checker.error(
            op_at, f"{step.op} needs a daemon target (client = 'daemon' or 'resilient')"
        )
    if step.op == "chat" and target.client in ("daemon", "resilient"):
        raise checker.error(op_at, f"chat is not supported by a {target.client!r} target")
    if step.op == "job" and "checkpoint" not in resilience:
        raise checker.error(op_at, "job needs a [resilience.checkpoint] table")
    if step.status is not None and target.client != "resilient":
        raise checker.error(
            (*at, "status"),
            "status is what a resilient client's status() says: it needs "
            f"[target] client = 'resilient', not {target.client!r}",
        )
    if step.op == "advance" and step.seconds <= 0:
        raise checker.error(op_at, "advance needs seconds > 0")


def _target(
    checker: _Checker, raw: Mapping[str, Any], *, shorthand: bool
) -> tuple[Target, Callable[..., Any] | None]:
    """The ``[target]`` table as a :class:`Target`, and a callable target's function (its
    path checked now: importable, present, callable)."""
    at: Path_ = ("target",)
    kinds = [k for k in ("client", "factory", "callable") if k in raw]
    if len(kinds) > 1:
        raise checker.error(
            (*at, kinds[1]), f"give one of client, factory or callable, not {' and '.join(kinds)}"
        )
    if "callable" in raw:
        for key in ("model", "max_tokens", "timeout", "policy"):
            if key in raw:
                raise checker.error(
                    (*at, key), f"{key} is for a model target (client or factory), not a callable"
                )
    if "daemon_url" in raw:
        if "factory" not in raw and "callable" not in raw:
            raise checker.error(
                (*at, "daemon_url"),
                "daemon_url names your own server, for a callable or factory target (a client "
                "target has the scenario's daemon, or none)",
            )
        try:
            address_of(raw["daemon_url"])
        except ValueError as exc:
            raise checker.error((*at, "daemon_url"), str(exc)) from None
    if raw.get("route", "hooks") == "wire" and raw.get("client") not in ("daemon", "resilient"):
        raise checker.error(
            (*at, "route"),
            "route = 'wire' puts a fault proxy in front of the scenario's own daemon: it needs "
            "client = 'daemon' or 'resilient'",
        )
    _check_exception_names(checker, raw.get("errors", ()), (*at, "errors"))
    function: Callable[..., Any] | None = None
    for key in ("factory", "callable"):
        if key in raw:
            key_at = at if shorthand else (*at, key)
            try:
                found = _lookup(raw[key])
            except _NotFound as exc:
                raise checker.error(key_at, str(exc)) from None
            if not callable(found):
                raise checker.error(key_at, f"{raw[key]!r} is not callable: it is {_kind(found)}")
            function = found if key == "callable" else None
    target = Target(
        client=kinds[0] if kinds and kinds[0] != "client" else raw.get("client", "llama"),
        model=raw.get("model", "tiny"),
        factory=raw.get("factory"),
        max_tokens=raw.get("max_tokens", 32),
        timeout=float(raw.get("timeout", 10.0)),
        policy=raw.get("policy", "raise"),
        callable=raw.get("callable"),
        daemon_url=raw.get("daemon_url"),
        errors=tuple(raw.get("errors", ())),
        route=raw.get("route", "hooks"),
    )
    return target, function
