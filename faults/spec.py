"""A fault spec as data, and its canonical text: what :func:`faults.parser.parse` returns.

One spec grammar everywhere (command line, ``@pytest.mark.faults``, ``PYTEST_INJECT_FAULTS``,
scenario files); :mod:`faults.parser` reads it, and this module holds what it reads into.
A :class:`Spec` is frozen data: :class:`Entry` ➝ a :class:`Site` and a chain of
:class:`Term`. Arguments are bound to the kind's parameters and stored with the defaults
filled in, so two texts that mean the same thing parse to equal terms. ``str()`` of any of
these renders the canonical text: no whitespace outside quotes, defaults left out,
keyword-style parameters written ``name=value``, strings in double quotes, durations in
their shortest whole form (``500ms``, ``30s``, ``2m``; :func:`format_duration`).
``parse(str(parse(s))) == parse(s)``.

A malformed text is a :class:`SpecError` (a ``ValueError``): it carries the text, the
0-based column of the problem, and prints a caret under it, with a "did you mean" for a
misspelt name. A site's own text (``llama.generate``, ``py:MODULE:QUALNAME``) is read here
(:meth:`Site.parse`, :func:`read_site`), the rest of the grammar by the parser.

A site may appear once per spec. Specs from several sources are combined with
:func:`merge` (or :meth:`Spec.merged`): a later spec's entry for a site *replaces* the
earlier one's chain, in the earlier position; sites new to the merge are appended. The
plugin merges in order of increasing precedence (env, ini, command line, marker).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from faults.kinds import KINDS, PY, SITES, ArgType, ArgValue, KindInfo, Param
from pytest_resilience.core.durations import UNITS
from pytest_resilience.core.durations import seconds_of as to_seconds

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "MAX_NUMBER",
    "UNITS",
    "Entry",
    "Site",
    "Spec",
    "SpecError",
    "Term",
    "format_duration",
    "merge",
    "nearest",
    "read_site",
    "to_seconds",
]

#: The largest count, call number, ``after=`` or duration (in seconds) a spec may give.
MAX_NUMBER: Final = 10**9


class SpecError(ValueError):
    """A malformed fault spec.

    ``text`` is the spec, ``column`` the 0-based offset of the problem (``0 <= column <=
    len(text)``), ``message`` what is wrong, ``suggestion`` the nearest valid name when a
    name was misspelt. ``str()`` shows the message, the offending line, and a caret.
    """

    def __init__(
        self, message: str, text: str, column: int, *, suggestion: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.text = text
        self.column = max(0, min(column, len(text)))
        self.suggestion = suggestion

    def __str__(self) -> str:
        head = self.message
        if self.suggestion:
            head += f"; did you mean {self.suggestion!r}?"
        start = self.text.rfind("\n", 0, self.column) + 1
        end = self.text.find("\n", self.column)
        line = self.text[start : len(self.text) if end < 0 else end]
        # One printable cell per character, so the caret lines up.
        shown = "".join(" " if c.isspace() else c if c.isprintable() else "?" for c in line)
        return f"{head}\n  {shown}\n  {' ' * (self.column - start)}^"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_error, (self.message, self.text, self.column, self.suggestion))


def _rebuild_error(message: str, text: str, column: int, suggestion: str | None) -> SpecError:
    return SpecError(message, text, column, suggestion=suggestion)


# ------------------------------------------------------------------------------ the model


@dataclass(frozen=True, slots=True)
class Site:
    """Where a fault is injected.

    ``family`` is ``"llama"``, ``"daemon"`` or ``"py"``. ``target`` is the rest: ``"generate"``
    for ``llama.generate``, ``"myapp.llm:Client.ask"`` for ``py:myapp.llm:Client.ask``.
    """

    family: str
    target: str

    @classmethod
    def parse(cls, text: str) -> Site:
        """The site written in ``text``; raises :class:`SpecError` if it is not one."""
        site, end = read_site(text, _skip_ws(text, 0))
        end = _skip_ws(text, end)
        if end != len(text):
            raise SpecError(f"unexpected {_here(text, end)} after the site", text, end)
        return site

    @property
    def key(self) -> str:
        """The name the kind table uses: the site's name, or ``PY`` for a ``py:`` site."""
        return PY if self.family == PY else f"{self.family}.{self.target}"

    @property
    def module(self) -> str:
        """The module of a ``py:`` site (``""`` for built-in sites)."""
        return self.target.partition(":")[0] if self.family == PY else ""

    @property
    def qualname(self) -> str:
        """The qualified name of a ``py:`` site's callable (``""`` for built-in sites)."""
        return self.target.partition(":")[2] if self.family == PY else ""

    def __str__(self) -> str:
        return f"py:{self.target}" if self.family == PY else f"{self.family}.{self.target}"


@dataclass(frozen=True, slots=True)
class Term:
    """One step of a chain: a fault kind, its arguments, and when it may fire.

    ``args`` pairs every parameter of the kind, in order, with its value (defaults filled
    in). ``pct`` is the firing probability in percent (``None``: always), ``count`` the most
    times it fires (``None``: no limit), ``at`` the only call number it fires on, or the
    first one when ``at_and_after`` (``@n+``). See :mod:`faults.schedule` for the rules.
    """

    kind: str
    args: tuple[tuple[str, ArgValue], ...] = ()
    pct: float | None = None
    count: int | None = None
    at: int | None = None
    at_and_after: bool = False

    @property
    def info(self) -> KindInfo:
        """The kind's description (raises ``KeyError`` for a kind that does not exist)."""
        return KINDS[self.kind]

    def arg(self, name: str) -> ArgValue:
        """The value of the parameter ``name``; ``KeyError`` if the kind has no such one."""
        for key, value in self.args:
            if key == name:
                return value
        raise KeyError(f"{self.kind}() has no argument {name!r}")

    @property
    def action(self) -> str:
        """The kind and its arguments without the firing conditions: ``timeout(30s)``."""
        info = KINDS.get(self.kind)
        values = dict(self.args)
        if info is None:  # built by hand: render what there is
            return self.kind + (f"({','.join(map(str, values.values()))})" if values else "")
        shown: list[str] = []
        params = info.params
        positional = [p for p in params if not p.keyword]
        # Positional parameters up to the last one that differs from its default.
        last = max(
            (i for i, p in enumerate(positional) if values.get(p.name) != p.default), default=-1
        )
        shown.extend(_render(p, values.get(p.name)) for p in positional[: last + 1])
        shown.extend(
            f"{p.name}={_render(p, values.get(p.name))}"
            for p in params
            if p.keyword and values.get(p.name) != p.default
        )
        return f"{self.kind}({','.join(shown)})" if shown else self.kind

    def __str__(self) -> str:
        text = "" if self.pct is None else f"{_number(self.pct)}%"
        if self.count is not None:
            text += f"{self.count}*"
        if self.at is not None:
            text += f"@{self.at}" + ("+" if self.at_and_after else "")
        return text + self.action


@dataclass(frozen=True, slots=True)
class Entry:
    """A site and the chain of terms that decides its faults."""

    site: Site
    chain: tuple[Term, ...]

    def __str__(self) -> str:
        return f"{self.site}={'->'.join(map(str, self.chain))}"


@dataclass(frozen=True, slots=True)
class Spec:
    """A parsed fault spec: at most one entry per site, in the order written.

    Raises ``ValueError`` if built with the same site twice.
    """

    entries: tuple[Entry, ...] = ()

    def __post_init__(self) -> None:
        sites = [e.site for e in self.entries]
        if len(set(sites)) != len(sites):
            raise ValueError("a spec gives each site at most once")

    def __str__(self) -> str:
        return ";".join(map(str, self.entries))

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, site: Site | str) -> Entry | None:
        """The entry for ``site`` (a :class:`Site` or its text), or ``None``."""
        wanted = Site.parse(site) if isinstance(site, str) else site
        return next((e for e in self.entries if e.site == wanted), None)

    def merged(self, *later: Spec) -> Spec:
        """This spec overridden by ``later`` ones: see :func:`merge`."""
        return merge(self, *later)


def merge(*specs: Spec) -> Spec:
    """Combine specs; for a site given more than once, the last spec's chain wins.

    The winning entry keeps the position where the site first appeared; sites seen for the
    first time are appended.
    """
    by_site: dict[Site, Entry] = {}
    for spec in specs:
        for entry in spec.entries:
            by_site[entry.site] = entry  # dict keeps the first insertion position
    return Spec(tuple(by_site.values()))


# ------------------------------------------------------------------------------ rendering


def _number(x: float) -> str:
    """The shortest text ``float()`` reads back as exactly ``x``, never in exponent form."""
    if x.is_integer():
        return str(int(x))
    text = repr(x)
    if "e" not in text:
        return text
    from decimal import Decimal  # noqa: PLC0415 - rare (tiny values); keeps the import cheap

    return format(Decimal(text), "f")


def format_duration(seconds: float) -> str:
    """Render seconds as the grammar writes them: ``forever``, ``0s``, ``2m``, ``500ms``.

    A whole number of the largest unit wins; otherwise the shortest exact form. The text
    always parses back to exactly ``seconds``.
    """
    seconds = float(seconds)
    if seconds == math.inf:
        return "forever"
    if seconds == 0:
        return "0s"
    best = f"{_number(seconds)}s"  # always exact
    best_key = (not seconds.is_integer(), len(best))
    for unit, factor in UNITS.items():
        scaled = seconds * 1000 if unit == "ms" else seconds / factor
        text = _number(scaled) + unit
        if to_seconds(text[: -len(unit)], unit) != seconds:
            continue
        key = (not scaled.is_integer(), len(text))
        if key < best_key:
            best, best_key = text, key
    return best


def _render(param: Param, value: ArgValue) -> str:
    if param.type is ArgType.DURATION and isinstance(value, float | int):
        return format_duration(float(value))
    if param.type is ArgType.STRING and isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


# -------------------------------------------------------------------------- a site's text


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _here(text: str, pos: int) -> str:
    return repr(text[pos]) if pos < len(text) else "end of text"


def _is_site_char(c: str) -> bool:
    # any character of a Python identifier (str.isidentifier()), such as "·" or a combining
    # accent; the letters and digits Python refuses make a segment that is not one
    return c in ".:_" or c.isalnum() or f"_{c}".isidentifier()


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to a misspelt ``word``, for a "did you mean"; ``None`` if none is."""
    import difflib  # noqa: PLC0415 - only error messages need it; keeps the import cheap

    found = difflib.get_close_matches(
        word,
        list(choices),
        n=1,  # pragma: no mutate - only the best match is used: any n >= 1 gives the same
        cutoff=0.6,
    )
    return found[0] if found else None


def _bad_segment(path: str) -> int | None:
    """The offset of the first part of a dotted path that is not an identifier."""
    offset = 0
    for part in path.split("."):
        if not part.isidentifier():
            return offset
        offset += len(part) + 1
    return None


def read_site(text: str, start: int) -> tuple[Site, int]:
    """The site written in ``text`` at ``start``, and the position just after it.

    Raises :class:`SpecError` (the column in ``text``) when no site starts there, or an
    unknown or malformed one does.
    """
    end = start
    while end < len(text) and _is_site_char(text[end]):
        end += 1
    word = text[start:end]
    if not word:
        raise SpecError(
            "expected a site (such as llama.generate or py:module:function), not "
            + _here(text, start),
            text,
            start,
        )
    if word.startswith("py:"):
        return _py_site(text, word, start), end
    if word in SITES:
        family, _, target = word.partition(".")
        return Site(family, target), end
    hint = nearest(word, SITES)
    listing = "" if hint else f" (sites: {', '.join(SITES)}, or py:MODULE:QUALNAME)"
    raise SpecError(f"unknown site {word!r}{listing}", text, start, suggestion=hint)


def _py_site(text: str, word: str, start: int) -> Site:
    module, colon, qualname = word[3:].partition(":")
    usage = "a py: site is py:MODULE:QUALNAME, such as py:myapp.llm:Client.ask"
    if not colon:
        raise SpecError(usage, text, start + len(word))
    for path, offset, what in (
        (module, 3, "module path"),
        (qualname, 4 + len(module), "qualified name"),
    ):
        bad = _bad_segment(path)
        if bad is not None:
            raise SpecError(f"bad {what} in {word!r}: {usage}", text, start + offset + bad)
    return Site(PY, f"{module}:{qualname}")
