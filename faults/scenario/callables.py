"""Callable targets: an application's own function (``module:function``) as what the steps
call. :func:`_lookup` imports the object a path names, or says exactly what is wrong with
the path; the rest checks, at load, that each ``call`` step's arguments bind to the
function's signature and fit its plain annotations, and that the tables of a callable
scenario are ones that apply to it. The run uses the same lookup and signature helpers to
give the function the scenario's clock and journal when it asks for them.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import keyword
import types
import typing
from typing import TYPE_CHECKING, Any, Final

from faults.scenario.schema import CONTEXT_ARGS, _kind

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from faults.scenario.model import Step, Target
    from faults.scenario.reading import Path_
    from faults.scenario.schema import _Checker


class _NotFound(LookupError):
    """A ``module:attribute`` path that does not lead to an object; the message says why."""


_MISSING: Final = object()


def _lookup(path: str) -> Any:
    """The object ``module:attr.attr`` names, imported now; :class:`_NotFound` says what is
    wrong (no colon, a module that cannot be imported or raises, a missing attribute)."""
    module_name, colon, qualname = path.partition(":")
    if not colon or not module_name or not qualname:
        module_guess, _, name_guess = path.rpartition(".")
        hint = f" (did you mean {module_guess + ':' + name_guess!r}?)" if module_guess else ""
        raise _NotFound(
            f"expected 'module:callable' (e.g. 'myapp.chat:answer'), got {path!r}{hint}"
        )
    for part in (*module_name.split("."), *qualname.split(".")):
        if not part.isidentifier() or keyword.iskeyword(part):
            shown = "an empty part" if not part else f"{part!r}, which is not a Python identifier"
            raise _NotFound(
                f"expected 'module:callable' (dotted Python identifiers on each side of the "
                f"colon), got {path!r}: it has {shown}"
            )
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        where = " (is it installed, or on pytest's pythonpath?)" if exc.name == module_name else ""
        raise _NotFound(f"cannot import {module_name!r}: {exc}{where}") from None
    except Exception as exc:  # noqa: BLE001 - the module's own error, reported with file and line
        raise _NotFound(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    walked: list[str] = []
    for part in qualname.split("."):
        value = getattr(found, part, _MISSING)
        if value is _MISSING:
            owner = f"{module_name}:{'.'.join(walked)}" if walked else f"module {module_name!r}"
            public = [n for n in dir(found) if not n.startswith("_")]
            near = difflib.get_close_matches(part, public, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise _NotFound(f"{owner} has no attribute {part!r}{hint}")
        found = value
        walked.append(part)
    return found


#: Tables that belong to the model ops the scenario runs itself, not to a callable target.
_MODEL_ONLY_RESILIENCE: Final = ("stream", "fallback", "degrade", "checkpoint")
_MODEL_ONLY_EXPECT: Final = ("partial_kept", "source_closed")


def _check_callable_tables(
    checker: _Checker, resilience: Mapping[str, Any], expect: Mapping[str, Any]
) -> None:
    for section in _MODEL_ONLY_RESILIENCE:
        if section in resilience:
            raise checker.error(
                ("resilience", section),
                f"[resilience.{section}] acts on model ops; around a callable target the "
                "scenario can put [resilience.retry] and [resilience.breaker]",
            )
    for key in _MODEL_ONLY_EXPECT:
        if key in expect:
            raise checker.error(
                ("expect", key), f"{key} is about the scenario's own streams: not for a callable"
            )


def _context_args(signature: inspect.Signature) -> list[str]:
    """The :data:`CONTEXT_ARGS` a callable takes by name."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = signature.parameters
    return [n for n in CONTEXT_ARGS if n in params and params[n].kind in kinds]


def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    """The signature, its annotations evaluated when they can be (for messages)."""
    with contextlib.suppress(Exception):
        return inspect.signature(function, eval_str=True)
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none: the call itself will tell
        return None


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of a function's parameters ({} when they cannot be read)."""
    source: Any = typing.cast("Any", function).__init__ if inspect.isclass(function) else function
    if not inspect.isroutine(source):
        return {}
    try:
        return typing.get_type_hints(source)
    except Exception:  # noqa: BLE001 - one annotation names what is not importable at run time
        pass  # (a TYPE_CHECKING import): read the others one by one
    namespace = getattr(inspect.unwrap(source), "__globals__", {})
    hints: dict[str, Any] = {}
    for name, annotation in getattr(source, "__annotations__", {}).items():
        with contextlib.suppress(Exception):
            hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
    return hints


def _accepts(hint: Any, value: Any) -> bool | None:
    """Whether ``value`` (a TOML value) fits the annotation ``hint``; None: cannot tell."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        fits = [_accepts(arg, value) for arg in typing.get_args(hint)]
        return True if True in fits else None if None in fits else False
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is typing.Annotated:
        return _accepts(typing.get_args(hint)[0], value)
    if origin is not None:
        hint = origin  # list[str] -> list: the items are not checked
    if not isinstance(hint, type) or hint is object:
        return None
    if isinstance(value, bool) and hint in (int, float):
        return False  # true and false are ints to Python, not to whoever wrote them
    if hint is float:
        return isinstance(value, int | float)
    try:
        return isinstance(value, hint)
    except TypeError:  # a protocol that is not runtime-checkable
        return None


class _Shown:
    """An annotation that could not be evaluated, shown as written (not quoted)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _signature_text(signature: inspect.Signature) -> str:
    """``(prompt: str, *, clock: Clock | None = None)``, string annotations unquoted."""

    def shown(annotation: Any) -> Any:
        return _Shown(annotation) if isinstance(annotation, str) else annotation

    params = [p.replace(annotation=shown(p.annotation)) for p in signature.parameters.values()]
    return str(
        signature.replace(parameters=params, return_annotation=shown(signature.return_annotation))
    )


def _hint_text(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _call_text(step: Step) -> str:
    """The arguments of a call step, as Python would show them: ``'Hello', n=2``."""
    shown = ", ".join([*map(repr, step.args), *(f"{k}={v!r}" for k, v in step.kwargs.items())])
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _check_arguments(
    checker: _Checker,
    step: Step,
    at: Path_,
    *,
    target: Target,
    function: Callable[..., Any],
    raw: Mapping[str, Any],
) -> None:
    """A call step's arguments must bind to the function's signature, and each must fit its
    parameter's annotation when that is a plain type (``str``, ``int | None``, ``list``)."""
    signature = _signature(function)
    if signature is None:
        return
    args_key = "args" if "args" in raw else "prompt" if "prompt" in raw else "op"
    context = [n for n in _context_args(signature) if n not in step.kwargs]
    try:
        bound = signature.bind(*step.args, **dict.fromkeys(context), **step.kwargs)
    except TypeError as exc:
        key = "kwargs" if "kwargs" in raw and "keyword" in str(exc) else args_key
        raise checker.error(
            (*at, key),
            f"cannot call {target.callable}({_call_text(step)}): {exc}; "
            f"it takes {_signature_text(signature)}",
        ) from None
    hints = _hints(function)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    for name, value in bound.arguments.items():
        if name in context or signature.parameters[name].kind in variadic or name not in hints:
            continue
        if _accepts(hints[name], value) is False:
            key = "kwargs" if name in step.kwargs else args_key
            raise checker.error(
                (*at, key),
                f"{target.callable}: parameter {name!r} takes {_hint_text(hints[name])}, "
                f"got {_kind(value)}",
            )
