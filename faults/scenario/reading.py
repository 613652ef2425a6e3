"""Reading a scenario file, and where each of its keys is: its bytes (:func:`_read`), its
UTF-8 text (:func:`_decode`), its TOML (:func:`_toml`, which refuses nesting deeper than
:data:`MAX_DEPTH` before and after tomllib reads it) and the line of every table, key and
array element (:func:`key_lines`); with :class:`ScenarioError`, the error of a file that
names its file, line and dotted key, and :func:`_safe`, which escapes what a file holds
before a terminal sees it. The reading itself is the core's
(:mod:`pytest_resilience.core.toml_lines`, which policy files share); this module gives it
the scenario's error and words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_resilience.core.toml_lines import (
    MAX_DEPTH,
    FileError,
    Path_,
    Scan,
    decode,
    dotted,
    key_lines,
    line_of,
    parse_toml,
    read_file,
    safe,
    safe_lines,
)

if TYPE_CHECKING:
    import os

__all__ = ["MAX_DEPTH", "Path_", "ScenarioError", "key_lines"]


class ScenarioError(FileError):
    """A scenario file that cannot be used: ``path``, ``line`` (1-based), ``key`` (dotted,
    ``steps[2].op`` for the second step; empty for a problem with the whole file) and
    ``message``. ``str()``: ``"scenarios/x.toml:12: expect.sucess_rate: unknown key (did you
    mean 'success_rate'?)"``."""


_Scan = Scan
_line_of = line_of
_dotted = dotted
_safe = safe
_safe_lines = safe_lines


def _read(path: str | os.PathLike[str]) -> bytes:
    return read_file(path, what="the scenario", error=ScenarioError)


def _decode(data: bytes, where: str) -> str:
    """The text of a scenario file: UTF-8 (a byte-order mark is skipped), or an error at the
    first byte that is not, naming the key whose line it is on."""
    return decode(data, where, error=ScenarioError)


def _toml(source: str, where: str) -> tuple[dict[str, Any], Scan]:
    """The parsed document and where its keys are; nesting is checked before tomllib reads
    it (tomllib recurses once a level) and after (dotted keys nest without brackets)."""
    return parse_toml(source, where, error=ScenarioError)
