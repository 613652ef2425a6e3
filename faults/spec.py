"""The ``--inject-faults`` grammar: parse fault specs, and render them back (DESIGN §6).

One grammar everywhere (command line, ``@pytest.mark.faults``, ``PYTEST_INJECT_FAULTS``,
scenario files)::

    spec   := entry (";" entry)*
    entry  := site "=" chain
    chain  := term ("->" term)*
    term   := [pct "%"] [count "*"] ["@" n ["+"]] kind ["(" args ")"]
    args   := arg ("," arg)*          arg := value | key "=" value
    value  := number | duration (500ms, 30s, 2m, 1h) | name | quoted string

Whitespace is allowed between tokens. An empty (or blank) text is the empty :class:`Spec`.
Inside quotes (``"..."`` or ``'...'``) a backslash makes the next character literal.
Durations need a unit (``ms``, ``s``, ``m``, ``h``) and become float seconds; ``forever``
is accepted where a kind allows it (``timeout``, ``stall(for=...)``, ``pause``). Numbers
(counts, call numbers, durations) are at most 10⁹; ``pct`` is between 0 and 100.

:func:`parse` returns frozen data: :class:`Spec` ➝ :class:`Entry` (a :class:`Site` and a
chain of :class:`Term`). Arguments are bound to the kind's parameters (positionally or by
name), checked against their types (:mod:`faults.kinds`), and stored with the defaults
filled in, so two texts that mean the same thing parse to equal terms. ``str()`` of any of
these renders the canonical text: no whitespace outside quotes, defaults left out,
keyword-style parameters written ``name=value``, strings in double quotes, durations in
their shortest whole form (``500ms``, ``30s``, ``2m``). ``parse(str(parse(s))) == parse(s)``.

Every malformed text raises :class:`SpecError` (a ``ValueError``) and nothing else: it
carries the text, the 0-based column of the problem, and prints a caret under it, with a
"did you mean" for a misspelt site, kind, argument or exception name.

A site may appear once per spec. Specs from several sources are combined with
:func:`merge` (or :meth:`Spec.merged`): a later spec's entry for a site *replaces* the
earlier one's chain, in the earlier position; sites new to the merge are appended. The
plugin merges in order of increasing precedence (env, ini, command line, marker).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from faults.kinds import KINDS, PY, SITES, ArgType, ArgValue, KindInfo, Param, kinds_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

__all__ = [
    "MAX_NUMBER",
    "Entry",
    "Site",
    "Spec",
    "SpecError",
    "Term",
    "format_duration",
    "merge",
    "parse",
]

#: The largest count, call number, ``after=`` or duration (in seconds) a spec may give.
MAX_NUMBER: Final = 10**9
_MAX_DIGITS: Final = 15  # integer digits read before a number is refused as too large
_UNITS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


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
        parser = _Parser(text)
        parser.skip_ws()
        site = parser.site()
        parser.skip_ws()
        if parser.pos != len(text):
            raise parser.error(f"unexpected {parser.here()} after the site")
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


def parse(text: str) -> Spec:
    """Parse a fault spec. Raises :class:`SpecError` (and nothing else) if it is malformed."""
    return _Parser(text).spec()


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


def _seconds(number: str, unit: str) -> float:
    # Dividing by 1000 is exact where multiplying by 0.001 is not: 500ms is exactly 0.5.
    return float(number) / 1000 if unit == "ms" else float(number) * _UNITS[unit]


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
    for unit, factor in _UNITS.items():
        scaled = seconds * 1000 if unit == "ms" else seconds / factor
        text = _number(scaled) + unit
        if _seconds(text[: -len(unit)], unit) != seconds:
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


# -------------------------------------------------------------------------------- parsing


class _Raw(NamedTuple):
    """A value as written, before it is bound to a parameter."""

    kind: str  # "number", "duration", "name" or "string"
    value: str | float  # the text of numbers and names, the content of strings, seconds
    text: str  # the source text, for messages
    column: int


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


def _is_name_start(c: str) -> bool:
    return c == "_" or c.isalpha()


def _is_name_char(c: str) -> bool:
    return c == "_" or c.isalnum()


def _is_site_char(c: str) -> bool:
    return c in ".:" or _is_name_char(c)


def _nearest(word: str, choices: Iterable[str]) -> str | None:
    import difflib  # noqa: PLC0415 - only error messages need it; keeps the import cheap

    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _bad_segment(path: str) -> int | None:
    """The offset of the first part of a dotted path that is not an identifier."""
    offset = 0
    for part in path.split("."):
        if not part.isidentifier():
            return offset
        offset += len(part) + 1
    return None


class _Parser:
    """Recursive descent over the characters, with the position as the only state."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # --- helpers

    def error(self, message: str, column: int | None = None, hint: str | None = None) -> SpecError:
        return SpecError(
            message, self.text, self.pos if column is None else column, suggestion=hint
        )

    def peek(self, ahead: int = 0) -> str:
        i = self.pos + ahead
        return self.text[i] if i < len(self.text) else ""

    def here(self) -> str:
        c = self.peek()
        return repr(c) if c else "end of text"

    def skip_ws(self) -> None:
        while self.peek().isspace():
            self.pos += 1

    def run(self, accept: Callable[[str], bool]) -> str:
        """Consume the longest run of characters for which ``accept(c)`` is true."""
        start = self.pos
        while (c := self.peek()) and accept(c):
            self.pos += 1
        return self.text[start : self.pos]

    def number(self) -> str:
        start = self.pos
        whole = self.run(_is_digit)
        if self.peek() == "." and _is_digit(self.peek(1)):
            self.pos += 1
            self.run(_is_digit)
        if len(whole) > _MAX_DIGITS:
            raise self.error("number too large", start)
        return self.text[start : self.pos]

    def whole(self, text: str, column: int, what: str) -> int:
        if "." in text:
            raise self.error(f"{what} must be a whole number, not {text!r}", column)
        value = int(text)
        if value > MAX_NUMBER:
            raise self.error(f"{what} must be at most {MAX_NUMBER}, not {text}", column)
        return value

    # --- grammar

    def spec(self) -> Spec:
        self.skip_ws()
        if self.pos == len(self.text):
            return Spec()
        entries: list[Entry] = []
        seen: dict[Site, int] = {}
        while True:
            start = self.pos
            entry = self.entry()
            if entry.site in seen:
                raise self.error(
                    f"site {str(entry.site)!r} is given twice (also at column "
                    f"{seen[entry.site]}): join its terms into one chain with '->'",
                    start,
                )
            seen[entry.site] = start
            entries.append(entry)
            self.skip_ws()
            if self.pos == len(self.text):
                return Spec(tuple(entries))
            if self.peek() == ")":
                raise self.error("unbalanced ')': no '(' is open")
            if self.peek() != ";":
                raise self.error(f"expected ';' or '->' after the term, not {self.here()}")
            self.pos += 1
            self.skip_ws()

    def entry(self) -> Entry:
        site = self.site()
        end_of_site = self.pos
        self.skip_ws()
        if self.peek() != "=":
            raise self.error(f"expected '=' after the site {str(site)!r}", end_of_site)
        self.pos += 1
        terms = [self.term(site, "'='")]
        while True:
            self.skip_ws()
            if not self.text.startswith("->", self.pos):
                return Entry(site, tuple(terms))
            self.pos += 2
            terms.append(self.term(site, "'->'"))

    def site(self) -> Site:
        start = self.pos
        word = self.run(_is_site_char)
        if not word:
            raise self.error(
                f"expected a site (such as llama.generate or py:module:function), not {self.here()}"
            )
        if word.startswith("py:"):
            return self.py_site(word, start)
        if word in SITES:
            family, _, target = word.partition(".")
            return Site(family, target)
        hint = _nearest(word, SITES)
        listing = "" if hint else f" (sites: {', '.join(SITES)}, or py:MODULE:QUALNAME)"
        raise self.error(f"unknown site {word!r}{listing}", start, hint)

    def py_site(self, word: str, start: int) -> Site:
        module, colon, qualname = word[3:].partition(":")
        usage = "a py: site is py:MODULE:QUALNAME, such as py:myapp.llm:Client.ask"
        if not colon:
            raise self.error(usage, start + len(word))
        for path, offset, what in (
            (module, 3, "module path"),
            (qualname, 4 + len(module), "qualified name"),
        ):
            bad = _bad_segment(path)
            if bad is not None:
                raise self.error(f"bad {what} in {word!r}: {usage}", start + offset + bad)
        return Site(PY, f"{module}:{qualname}")

    def pct_count(self) -> tuple[float | None, int | None]:
        """``[pct "%"] [count "*"]``."""
        pct: float | None = None
        count: int | None = None
        if not _is_digit(self.peek()):
            return pct, count
        column, number = self.pos, self.number()
        self.skip_ws()
        if self.peek() == "%":
            self.pos += 1
            pct = float(number)
            if pct > 100:
                raise self.error(f"probability {number}% is over 100%", column)
            self.skip_ws()
            if not _is_digit(self.peek()):
                return pct, count
            column, number = self.pos, self.number()
            self.skip_ws()
            if self.peek() != "*":
                raise self.error(f"expected '*' after the count {number}, not {self.here()}")
        elif self.peek() != "*":
            raise self.error(f"expected '%' or '*' after {number!r}, not {self.here()}")
        self.pos += 1
        count = self.whole(number, column, "a count")
        if count < 1:
            raise self.error("a count must be at least 1", column)
        self.skip_ws()
        return pct, count

    def at(self) -> tuple[int | None, bool]:
        """``["@" n ["+"]]``."""
        if self.peek() != "@":
            return None, False
        self.pos += 1
        self.skip_ws()
        column = self.pos
        digits = self.run(_is_digit)
        if not digits:
            raise self.error(f"expected a call number after '@', not {self.here()}")
        if len(digits) > _MAX_DIGITS:
            raise self.error("number too large", column)
        at = self.whole(digits, column, "a call number")
        if at < 1:
            raise self.error("call numbers start at 1: @1 is the first call", column)
        self.skip_ws()
        plus = self.peek() == "+"
        self.pos += plus
        self.skip_ws()
        return at, plus

    def term(self, site: Site, after: str) -> Term:
        self.skip_ws()
        pct, count = self.pct_count()
        at, plus = self.at()
        column = self.pos
        if _is_digit(self.peek()):
            raise self.error("pct% and count* come before @n: the order is pct% count* @n kind")
        name = self.run(_is_name_char)
        if not name:
            raise self.error(
                f"expected a fault kind after {after}, not {self.here()} "
                f"({site} admits: {', '.join(kinds_for(site.key))})"
            )
        info = KINDS.get(name)
        if info is None:
            raise self.error(f"unknown fault kind {name!r}", column, _nearest(name, KINDS))
        if not info.admits(site.key):
            raise self.error(
                f"{site} does not admit {name!r} (it admits: {', '.join(kinds_for(site.key))})",
                column,
            )
        end = self.pos
        self.skip_ws()
        raw: list[tuple[str | None, int, _Raw]] = []
        if self.peek() == "(":
            raw, end = self.args(info)
        else:
            self.pos = end  # the whitespace belongs to whatever follows
        return Term(name, self.bind(info, raw, end), pct, count, at, plus)

    def args(self, info: KindInfo) -> tuple[list[tuple[str | None, int, _Raw]], int]:
        opened = self.pos
        self.pos += 1
        items: list[tuple[str | None, int, _Raw]] = []
        self.skip_ws()
        if self.peek() == ")":
            self.pos += 1
            return items, self.pos - 1
        while True:
            self.skip_ws()
            key: str | None = None
            key_column = self.pos
            if _is_name_start(self.peek()):
                word = self.run(_is_name_char)
                self.skip_ws()
                if self.peek() == "=":
                    key = word
                    self.pos += 1
                    self.skip_ws()
                else:
                    self.pos = key_column
            items.append((key, key_column, self.value()))
            self.skip_ws()
            c = self.peek()
            if c == ",":
                self.pos += 1
            elif c == ")":
                self.pos += 1
                return items, self.pos - 1
            elif not c:
                raise self.error(f"unclosed '(' (opened at column {opened})")
            else:
                raise self.error(
                    f"expected ',' or ')' in the arguments of {info.name}(), not {c!r}"
                    f" (the '(' at column {opened} is still open)"
                )

    def value(self) -> _Raw:
        start = self.pos
        c = self.peek()
        if c in ("'", '"'):
            content = self.string()
            return _Raw("string", content, self.text[start : self.pos], start)
        if _is_digit(c):
            number = self.number()
            unit_column = self.pos
            unit = self.run(str.isalpha)
            text = self.text[start : self.pos]
            if not unit:
                return _Raw("number", number, text, start)
            if unit not in _UNITS:
                raise self.error(
                    f"bad duration {text!r}: the unit must be ms, s, m or h", unit_column
                )
            seconds = _seconds(number, unit)
            if seconds > MAX_NUMBER:
                raise self.error(
                    f"duration {text} is too long (at most {MAX_NUMBER}s; or forever)", start
                )
            return _Raw("duration", seconds, text, start)
        if _is_name_start(c):
            while True:
                part = self.pos
                if not self.run(_is_name_char).isidentifier():
                    raise self.error("not a valid name", part)
                if not (self.peek() == "." and _is_name_start(self.peek(1))):
                    break
                self.pos += 1
            text = self.text[start : self.pos]
            return _Raw("name", text, text, start)
        raise self.error(
            f"expected a value (a number, a duration such as 30s, a name or a quoted string), "
            f"not {self.here()}"
        )

    def string(self) -> str:
        start, quote = self.pos, self.peek()
        self.pos += 1
        out: list[str] = []
        while c := self.peek():
            self.pos += 1
            if c == quote:
                return "".join(out)
            if c == "\\" and self.peek():
                c = self.peek()
                self.pos += 1
            out.append(c)
        raise self.error(
            f"unterminated string (the quote at column {start} is never closed)", start
        )

    def bind(
        self, info: KindInfo, items: list[tuple[str | None, int, _Raw]], end: int
    ) -> tuple[tuple[str, ArgValue], ...]:
        values: dict[str, ArgValue] = {}
        keywords = False
        for i, (key, key_column, raw) in enumerate(items):
            if key is None:
                if keywords:
                    raise self.error("a positional argument after a keyword argument", raw.column)
                if i >= len(info.params):
                    most = f"at most {len(info.params)}" if info.params else "no"
                    raise self.error(
                        f"{info.name} takes {most} argument{'s' * (len(info.params) != 1)}"
                        + (f": {info.signature}" if info.params else ""),
                        raw.column,
                    )
                param = info.params[i]
            else:
                keywords = True
                found = info.param(key)
                if found is None:
                    names = [p.name for p in info.params]
                    takes = f"it takes: {info.signature}" if names else "it takes no arguments"
                    raise self.error(
                        f"{info.name}() has no argument {key!r} ({takes})",
                        key_column,
                        _nearest(key, names),
                    )
                param = found
            if param.name in values:
                raise self.error(f"argument {param.name!r} is given twice", key_column)
            values[param.name] = self.convert(info, param, raw)
        for p in info.params:
            if p.name not in values:
                if p.required:
                    raise self.error(
                        f"{info.name}() needs the argument {p.name!r}: {info.signature}", end
                    )
                values[p.name] = p.default
        return tuple((p.name, values[p.name]) for p in info.params)

    def convert(self, info: KindInfo, param: Param, raw: _Raw) -> ArgValue:
        label = f"the argument {param.name!r} of {info.name}()"
        value: ArgValue
        if param.type is ArgType.INT:
            if raw.kind != "number":
                raise self.error(f"{label} takes a whole number, not {raw.text!r}", raw.column)
            value = self.whole(raw.text, raw.column, label)
        elif param.type is ArgType.DURATION:
            if raw.kind == "duration":
                value = raw.value
            elif param.forever and raw.kind == "name" and raw.text == "forever":
                value = math.inf
            elif raw.kind == "number":
                raise self.error(
                    f"{label} is a duration and needs a unit: {raw.text}s, {raw.text}ms, ...",
                    raw.column + len(raw.text),
                )
            else:
                also = " or forever" if param.forever else ""
                raise self.error(
                    f"{label} takes a duration such as 30s or 500ms{also}, not {raw.text!r}",
                    raw.column,
                )
        elif param.type is ArgType.NAME:
            if raw.kind != "name":
                raise self.error(f"{label} takes a name, not {raw.text!r}", raw.column)
            value = raw.value
        else:
            if raw.kind not in ("string", "name"):
                raise self.error(f"{label} takes a quoted string, not {raw.text!r}", raw.column)
            value = raw.value
        if param.check is not None:
            problem = param.check(value)
            if problem is not None:
                raise self.error(problem[0], raw.column, problem[1])
        return value
