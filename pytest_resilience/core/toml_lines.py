"""Reading a TOML file and where each of its keys is: its bytes (:func:`read_file`), its
UTF-8 text (:func:`decode`), its TOML (:func:`parse_toml`, which refuses nesting deeper than
:data:`MAX_DEPTH` before and after tomllib reads it) and, since tomllib gives no positions,
the line of every table, key and array element, found by one scan of the text
(:class:`Scan`, :func:`key_lines`); with :class:`FileError`, the error of a file that names
its file, line and dotted key, and :func:`safe`, which escapes what a file holds before a
terminal sees it.

Scenario files (``faults.scenario``) and policy files
(:mod:`pytest_resilience.core.config`) are both read here; each passes its own
:class:`FileError` subclass as ``error=``.
"""

from __future__ import annotations

import contextlib
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

__all__ = [
    "MAX_DEPTH",
    "FileError",
    "Path_",
    "Scan",
    "decode",
    "dotted",
    "key_lines",
    "line_of",
    "parse_toml",
    "read_file",
    "safe",
    "safe_lines",
]


class FileError(ValueError):
    """A file that cannot be used: ``path``, ``line`` (1-based), ``key`` (dotted,
    ``steps[2].op`` for the second entry of ``steps``; empty for a problem with the whole
    file) and ``message``. ``str()``: ``"x.toml:12: expect.sucess_rate: unknown key (did
    you mean 'success_rate'?)"``."""

    def __init__(self, path: str, line: int, key: str, message: str) -> None:
        super().__init__(message)
        self.path, self.line, self.key, self.message = path, line, key, message

    def __str__(self) -> str:
        # what the file holds is shown escaped: an ANSI escape in a key must not reach
        # the terminal (the message's own line breaks stay: a spec's caret is under it)
        where = f"{safe(self.path)}:{self.line}: "
        message = safe_lines(self.message)
        return where + (f"{safe(self.key)}: {message}" if self.key else message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.line, self.key, self.message))


_BARE = r"[A-Za-z0-9_-]+"
_PART = rf"(?:{_BARE}|\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*')"
_DOTTED = rf"{_PART}(?:[ \t]*\.[ \t]*{_PART})*"
_HEADER = re.compile(rf"(\[\[?)[ \t]*({_DOTTED})[ \t]*\]\]?[ \t\r]*(?:#[^\n]*)?$")
_KEY = re.compile(rf"[ \t]*({_DOTTED})[ \t]*=")
_SPLIT = re.compile(_PART)
# Strings, as TOML has them: a multi-line string may end in up to five quotes.
_STRINGS: Final = (
    ('"""', re.compile(r'"""(?:[^"\\]|\\.|"(?!""))*"{3,5}', re.DOTALL)),
    ("'''", re.compile(r"'''(?:[^']|'(?!''))*'{3,5}")),
    ('"', re.compile(r'"(?:[^"\\\n]|\\.)*"')),
    ("'", re.compile(r"'[^'\n]*'")),
)
_TOKEN = re.compile(r"[^\s,\[\]{}#]+")

Path_ = tuple[str | int, ...]

#: Arrays and tables nest at most this deep in a file (a scenario's ``steps[1].kwargs`` is 3
#: deep).
MAX_DEPTH: Final = 32


def _split_key(text: str) -> list[str]:
    return [_unquote(p) for p in _SPLIT.findall(text)][: MAX_DEPTH + 2]


def _unquote(part: str) -> str:
    if part[0] == "'":
        return part[1:-1]
    if part[0] != '"':
        return part
    if "\\" in part:  # escapes: let tomllib read them, as it read the document
        with contextlib.suppress(ValueError):
            key: str = tomllib.loads(f"k = {part}")["k"]
            return key
    return part[1:-1]


@dataclass(slots=True)
class _Frame:
    """An array or inline table being read by :class:`Scan`: its path, the next index."""

    array: bool
    path: Path_
    index: int = 0


class Scan:
    """Where the keys of a TOML text are: one pass over the text, without recursion, that
    never raises (a malformed text gives what could be found).

    ``lines``: the line (1-based) of every table, key and array element by path (``[a.b]``
    headers; ``[[steps]]`` counts its entries, so ``("steps", 0)`` is the first; ``key =``
    lines, dotted keys registering each prefix; keys of inline tables; the elements of
    arrays, ``("on", 1)`` being the second). Strings (multi-line ones too, and a ``\"\"\"``
    inside a one-line string) and comments are skipped. ``owner``: for each line that a
    ``key = value`` statement or a header covers, its path. ``depth``: the deepest nesting
    of arrays and inline tables; ``too_deep``: where it first went past :data:`MAX_DEPTH`
    (the line, and the key of the statement).
    """

    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0
        self.line = 1
        self.lines: dict[Path_, int] = {}
        self.owner: dict[int, Path_] = {}
        self.depth = 0
        #: where the nesting first went past MAX_DEPTH: the line and the path there
        self.too_deep: tuple[int, Path_] | None = None
        self.statement: Path_ = ()  # the key whose value is being read
        self._document()

    def _found(self, path: Path_) -> None:
        if len(path) <= MAX_DEPTH + 2:
            self.lines.setdefault(path, self.line)

    def _to_eol(self) -> None:
        end = self.src.find("\n", self.pos)
        self.pos = len(self.src) if end < 0 else end

    def _document(self) -> None:
        src, size = self.src, len(self.src)
        arrays: dict[tuple[str, ...], int] = {}  # array-of-tables path -> current index
        table: Path_ = ()
        while self.pos < size:
            char = src[self.pos]
            if char == "\n":
                self.line += 1
                self.pos += 1
            elif char in " \t\r":
                self.pos += 1
            elif char == "#":
                self._to_eol()
            elif char == "[":
                end = src.find("\n", self.pos)
                end = size if end < 0 else end
                header = _HEADER.match(src, self.pos, end)
                if header is not None:
                    names = _split_key(header.group(2))
                    if header.group(1) == "[[":
                        key = tuple(names)
                        arrays[key] = arrays.get(key, -1) + 1
                        for nested in [k for k in arrays if k[: len(key)] == key != k]:
                            del arrays[nested]  # a new entry starts its own sub-arrays afresh
                    table = _resolve(names, arrays)
                    self._found(table)
                    self.owner[self.line] = table
                self.pos = end
            else:
                found = _KEY.match(src, self.pos)
                if found is None:
                    self._to_eol()
                    continue
                names = _split_key(found.group(1))
                for i in range(1, len(names) + 1):
                    self._found((*table, *names[:i]))
                path = (*table, *names)
                first = self.line
                self.pos = found.end()
                self._value(path)
                for number in range(first, self.line + 1):
                    self.owner.setdefault(number, path)
                self._to_eol()

    def _value(self, path: Path_) -> None:
        """Skip the value of ``path``, registering what is in it; stops after the value, or
        at the end of its line if it is malformed."""
        src, size = self.src, len(self.src)
        self.statement = path
        frames: list[_Frame] = []
        want: str | None = "value"  # or "key" (in an inline table), "after" (in a frame)
        while want is not None and self.pos < size:
            char = src[self.pos]
            if char == "\n":
                if not frames:
                    return
                self.line += 1
                self.pos += 1
            elif char in " \t\r":
                self.pos += 1
            elif char == "#":
                if not frames:
                    return
                self._to_eol()
            elif want == "key":
                want, path = self._key(frames, char, path)
            elif want == "value":
                want, path = self._element(frames, char, path)
            else:
                want = self._after(frames, char)

    def _key(self, frames: list[_Frame], char: str, path: Path_) -> tuple[str | None, Path_]:
        """In an inline table: its end, or a key (registered)."""
        if char == "}":
            frames.pop()
            self.pos += 1
            return ("after" if frames else None), path
        found = _KEY.match(self.src, self.pos)
        if found is None:
            return None, path
        names = _split_key(found.group(1))
        base = frames[-1].path
        for i in range(1, len(names) + 1):
            self._found((*base, *names[:i]))
        self.pos = found.end()
        return "value", (*base, *names)

    def _element(self, frames: list[_Frame], char: str, path: Path_) -> tuple[str | None, Path_]:
        """A value: an array or inline table opens a frame; an array's element is
        registered by its index."""
        top = frames[-1] if frames else None
        if top is not None and top.array:
            if char == "]":  # an empty array, or a trailing comma
                frames.pop()
                self.pos += 1
                return ("after" if frames else None), path
            path = (*top.path, top.index)
            self._found(path)
        if char in "[{":
            frames.append(_Frame(char == "[", path))
            self.depth = max(self.depth, len(frames))
            if len(frames) > MAX_DEPTH and self.too_deep is None:
                self.too_deep = (self.line, self.statement)
            self.pos += 1
            return ("value" if char == "[" else "key"), path
        self._scalar()
        return ("after" if frames else None), path

    def _after(self, frames: list[_Frame], char: str) -> str | None:
        """After a value in an array or inline table: a comma, or the frame's end."""
        top = frames[-1]
        if char == ",":
            self.pos += 1
            top.index += 1
            return "value" if top.array else "key"
        if char == ("]" if top.array else "}"):
            frames.pop()
            self.pos += 1
            return "after" if frames else None
        self._scalar()  # malformed (or a date with a space): skip it
        return "after"

    def _scalar(self) -> None:
        src = self.src
        for opening, pattern in _STRINGS:
            if src.startswith(opening, self.pos):
                found = pattern.match(src, self.pos)
                if found is None:  # unterminated: give up on the rest of the line
                    self._to_eol()
                    return
                self.line += found.group().count("\n")
                self.pos = found.end()
                return
        token = _TOKEN.match(src, self.pos)
        self.pos = token.end() if token is not None else self.pos + 1


def key_lines(source: str) -> dict[Path_, int]:
    """The line (1-based) of every table, key and array element of a TOML text, by path.

    tomllib gives no positions, so they are found by scanning the text (:class:`Scan`):
    table headers (``[a.b]``; ``[[steps]]`` counts its entries: ``("steps", 0)`` is the
    first), ``key =`` lines (dotted keys register each prefix), the keys of inline tables
    and the elements of arrays (``("on", 1)`` is the second). Strings and comments are
    skipped, multi-line ones included. A path that is not located (inside a multi-line
    string) falls back to its nearest enclosing path (:func:`line_of` does).
    """
    return Scan(source).lines


def _resolve(names: list[str], arrays: Mapping[tuple[str, ...], int]) -> Path_:
    path: list[str | int] = []
    for i, name in enumerate(names):
        path.append(name)
        index = arrays.get(tuple(names[: i + 1]))
        if index is not None:
            path.append(index)
    return tuple(path)


def line_of(lines: Mapping[Path_, int], path: Path_) -> int:
    """The line of ``path``, else of its nearest located ancestor, else 1."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return 1


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part + 1}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def safe(text: str) -> str:
    """``text`` with every character a terminal would act on (ANSI escapes, other control
    characters, line breaks) shown as its escape: ``\\x1b[31m`` stays ``\\x1b[31m``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def safe_lines(text: str) -> str:
    """:func:`_safe` for each line of ``text``: the line breaks stay."""
    return "\n".join(safe(line) for line in text.split("\n"))


def read_file(
    path: str | os.PathLike[str], *, what: str = "the file", error: type[FileError] = FileError
) -> bytes:
    """The bytes of ``path``, or ``error`` at line 1 saying that ``what`` cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise error(str(path), 1, "", f"cannot read {what}: {exc}") from None


def decode(data: bytes, where: str, *, error: type[FileError] = FileError) -> str:
    """The text of a file: UTF-8 (a byte-order mark is skipped), or an error at the
    first byte that is not, naming the key whose line it is on."""
    bom = b"\xef\xbb\xbf"
    body = data.removeprefix(bom)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start + len(data) - len(body)
    before = data[:start]
    line = before.count(b"\n") + 1
    column = start - (before.rfind(b"\n") + 1) + 1
    scan = Scan(data.decode("utf-8", "replace"))
    key = dotted(scan.owner.get(line, ()))
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        hint = "it looks like UTF-16 or UTF-32: save it as UTF-8"
    else:
        hint = "save it as UTF-8"
    raise error(
        where,
        line,
        key,
        f"the file is not UTF-8: byte 0x{data[start]:02x} at column {column} ({hint})",
    )


def parse_toml(
    source: str, where: str, *, error: type[FileError] = FileError
) -> tuple[dict[str, Any], Scan]:
    """The parsed document and where its keys are; nesting is checked before tomllib reads
    it (tomllib recurses once a level) and after (dotted keys nest without brackets)."""
    scan = Scan(source)

    def too_deep(line: int, path: Path_) -> FileError:
        # the key where the nesting starts (steps[2].kwargs), not the whole of it: the
        # shortest prefix written on the line
        start = next(
            (path[:n] for n in range(1, len(path)) if scan.lines.get(path[:n]) == line), path
        )
        message = f"nested too deep: more than {MAX_DEPTH} levels of tables and arrays"
        return error(where, line, dotted(start), message)

    if scan.too_deep is not None:
        raise too_deep(*scan.too_deep)
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        line = int(found.group(1)) if found else source.count("\n") + 1
        key = dotted(scan.owner.get(line, ()))
        raise error(where, line, key, f"invalid TOML: {exc}") from None
    except ValueError:  # an integer too long for int(): tomllib lets the error through
        limit = sys.get_int_max_str_digits()
        digits = re.search(rf"[0-9_]{{{limit},}}", source)
        line = source.count("\n", 0, digits.start()) + 1 if digits else 1
        key = dotted(scan.owner.get(line, ()))
        message = f"invalid TOML: an integer of more than {limit} digits"
        raise error(where, line, key, message) from None
    except RecursionError:  # not reached after the check above; a last guard
        raise error(where, 1, "", "invalid TOML: nested too deep") from None
    deepest = _too_deep(data)
    if deepest is not None:
        raise too_deep(line_of(scan.lines, deepest), deepest)
    return data, scan


def _too_deep(data: Mapping[str, Any]) -> Path_ | None:
    """The path of a table or array nested deeper than :data:`MAX_DEPTH`, if any."""
    stack: list[tuple[Path_, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(item, dict | list):
                if len(path) >= MAX_DEPTH:
                    return (*path, key)
                stack.append(((*path, key), item))
    return None
