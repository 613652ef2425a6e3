"""The ``--inject-faults`` grammar: :func:`parse` reads spec text into a :class:`~faults.spec.Spec`.

One grammar everywhere (command line, ``@pytest.mark.faults``, ``PYTEST_INJECT_FAULTS``,
scenario files)::

    spec   := entry (";" entry)*
    entry  := site "=" chain
    chain  := term ("->" term)*
    term   := [pct "%"] [count "*"] ["@" n ["+"]] kind ["(" args ")"]
    args   := arg ("," arg)*          arg := value | key "=" value
    value  := number | duration (500ms, 30s, 2m, 1h) | name | quoted string

Whitespace is allowed between tokens. An empty (or blank) text is the empty :class:`Spec`.
A name is a Python identifier (``str.isidentifier()``), or several joined by dots.
Inside quotes (``"..."`` or ``'...'``) a backslash makes the next character literal.
Durations need a unit (``ms``, ``s``, ``m``, ``h``) and become float seconds; ``forever``
is accepted where a kind allows it (``timeout``, ``stall(for=...)``, ``pause``). Numbers
(counts, call numbers, durations) are at most 10⁹; ``pct`` is between 0 and 100. A site
may appear once per spec.

Arguments are bound to the kind's parameters (positionally or by name), checked against
their types (:mod:`faults.kinds`), and stored with the defaults filled in (:mod:`faults.spec`
says what the result is, and how it renders back to canonical text).

Every malformed text raises :class:`~faults.spec.SpecError` (a ``ValueError``) and nothing
else, with the 0-based column of the problem and a "did you mean" for a misspelt site,
kind, argument or exception name.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final, NamedTuple

from faults.kinds import KINDS, ArgType, ArgValue, KindInfo, Param, kinds_for
from faults.spec import (
    MAX_NUMBER,
    UNITS,
    Entry,
    Site,
    Spec,
    SpecError,
    Term,
    nearest,
    read_site,
    to_seconds,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["parse"]

_MAX_DIGITS: Final = 15  # integer digits read before a number is refused as too large


def parse(text: str) -> Spec:
    """Parse a fault spec. Raises :class:`SpecError` (and nothing else) if it is malformed."""
    return _Parser(text).spec()


class _Raw(NamedTuple):
    """A value as written, before it is bound to a parameter."""

    kind: str  # "number", "duration", "name" or "string"
    value: str | float  # the text of numbers and names, the content of strings, seconds
    text: str  # the source text, for messages
    column: int


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


# A name is a Python identifier (or dotted identifiers), as str.isidentifier() judges it:
# "A·", "café" with a combining accent and "℘" are names. Letters and digits Python refuses
# in a name ("ͺ", "²") are read too, so that the name is refused as "not a valid name".


def _is_name_start(c: str) -> bool:
    return c.isidentifier() or c.isalpha()


def _is_name_char(c: str) -> bool:
    return len(c) == 1 and (c.isalnum() or f"_{c}".isidentifier())


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
        site, self.pos = read_site(self.text, self.pos)
        return site

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
            raise self.error(f"unknown fault kind {name!r}", column, nearest(name, KINDS))
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
            if unit not in UNITS:
                raise self.error(
                    f"bad duration {text!r}: the unit must be ms, s, m or h", unit_column
                )
            seconds = to_seconds(number, unit)
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
                        nearest(key, names),
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
