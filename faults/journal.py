"""Save a fault run's journal as JSON lines, and read it back to replay the same faults.

The file is one header line, then one line per event (``Journal.dump``)::

    {"kind": "faults.run", "version": 1, "spec": "llama.generate=30%timeout", "seed": 7,
     "scope": "test_x"}
    {"kind": "fault.injected", "time": 0.0, "source": "faults", "site": "llama.generate",
     "fault": "timeout", "call": 2}
    ...

(one line each in the file).

Replaying (``Injector.replay(path)``, built on :meth:`Recording.schedules`) makes every site
of the header's spec fire exactly the faults recorded for it, at the same call numbers, with
``Schedule.replaying``: no probability, no count, so the seed no longer matters. Only the
``FaultInjected`` events the injector wrote (source ``"faults"``) for sites of the header's
spec are replayed; the other events are kept for reading.

:func:`load` trusts nothing: every line is checked (the header, each event's kind and
fields against the registry of :mod:`pytest_resilience.core.events`, each fired fault and its
call number), and a file this package could not have written is a :class:`JournalFileError`
naming the file and the line, never a replay of something else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Final

from faults.parser import parse
from faults.schedule import Schedule
from faults.sites import SOURCE
from faults.spec import Site, Spec, SpecError
from pytest_resilience.core.events import FaultInjected, _show, event_from_dict

if TYPE_CHECKING:
    from collections.abc import Iterable

    from faults.spec import Term
    from pytest_resilience.core.events import Event
    from pytest_resilience.core.journal import Journal

__all__ = ["HEADER_KIND", "JournalFileError", "Recording", "dump", "load", "save"]

#: The ``kind`` of the header line.
HEADER_KIND: Final = "faults.run"
_VERSION: Final = 1


class JournalFileError(ValueError):
    """A saved journal that cannot be read; the message names the file and the line."""


def _header(spec: Spec | str, seed: int | str, scope: str) -> dict[str, Any]:
    return {
        "kind": HEADER_KIND,
        "version": _VERSION,
        "spec": str(spec),
        "seed": seed,
        "scope": scope,
    }


def dump(
    journal: Journal, stream: IO[str], *, spec: Spec | str, seed: int | str, scope: str = ""
) -> None:
    """Write the header line (spec text, seed, scope), then the journal's events."""
    stream.write(json.dumps(_header(spec, seed, scope)) + "\n")
    journal.dump(stream)


def save(
    journal: Journal,
    path: str | os.PathLike[str],
    *,
    spec: Spec | str,
    seed: int | str,
    scope: str = "",
) -> None:
    """:func:`dump` to a file (written whole, then renamed into place)."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as stream:
        dump(journal, stream, spec=spec, seed=seed, scope=scope)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class Recording:
    """A saved run: the spec and seed it ran with, and its events."""

    spec: Spec
    seed: int | str
    scope: str
    events: tuple[Event, ...]

    def fired(self) -> dict[Site, list[tuple[int, Term]]]:
        """The faults the injector fired, per site of the spec: (call number, term)."""
        found: dict[Site, list[tuple[int, Term]]] = {e.site: [] for e in self.spec}
        for event in self.events:
            if not isinstance(event, FaultInjected) or event.source != SOURCE:
                continue
            site = Site.parse(event.site)
            if site in found:
                term = parse(f"{site}={event.fault}").entries[0].chain[0]
                found[site].append((event.call, term))
        return found

    def schedules(self) -> dict[Site, Schedule]:
        """One replaying schedule per site of the spec."""
        return {
            site: Schedule.replaying(pairs, site=str(site)) for site, pairs in self.fired().items()
        }


def load(source: str | os.PathLike[str] | Iterable[str | bytes]) -> Recording:
    """Read a journal saved by :func:`save` / :func:`dump` (a path, or its lines).

    Raises :class:`JournalFileError` naming the file (``journal`` for lines) and the line,
    and nothing else, for a file that is not a journal this package could have written:

    * a line that is not UTF-8, not JSON, nested too deep, not a JSON object, or that
      repeats a key;
    * a first line that is not the header: ``{"kind": "faults.run", "version": 1, "spec":
      TEXT, "seed": INT_OR_TEXT, "scope": TEXT}`` (``scope`` may be left out, nothing else
      may be added), or a spec that does not parse;
    * an event of a kind that is not registered
      (:func:`~pytest_resilience.core.events.register_event`),
      with a field missing, unknown or of the wrong type, or a second header;
    * a fault the injector fired (``fault.injected`` from source ``"faults"``) whose site
      does not parse, whose fault is not one plain term the site admits (no ``pct%``,
      ``count*`` or ``@n``, no ``off``, no chain), whose call number is not a positive
      integer, or whose call number was already recorded for that site of the spec.

    Fired calls may come out of order: threads take their call numbers before they append
    their events. Blank lines are skipped, and a UTF-8 byte order mark before the header.
    """
    if isinstance(source, str | os.PathLike):
        where = os.fspath(source)
        with open(source, "rb") as stream:
            return _read(stream, where)
    return _read(source, "journal")


def _read(lines: Iterable[str | bytes], where: str) -> Recording:
    reader = _Reader()
    for number, raw in enumerate(lines, 1):
        try:
            reader.line(raw, number)
        except (ValueError, TypeError) as exc:  # SpecError and JSONDecodeError are ValueErrors
            problem = _spec_problem(exc) if isinstance(exc, SpecError) else str(exc)
            raise JournalFileError(f"{where}: line {number}: {_printable(problem)}") from exc
        except RecursionError:
            raise JournalFileError(f"{where}: line {number}: JSON nested too deep") from None
    if reader.header is None:  # the header belongs on line 1
        raise JournalFileError(f"{where}: line 1: empty: no header line")
    header = reader.header
    return Recording(reader.spec, header["seed"], header.get("scope", ""), tuple(reader.events))


class _Reader:
    """Reads a journal line by line, checking each (see :func:`load`)."""

    def __init__(self) -> None:
        self.header: dict[str, Any] | None = None
        self.header_line = 0
        self.spec = Spec()
        self.sites: set[Site] = set()
        self.events: list[Event] = []
        self.fired: dict[tuple[Site, int], int] = {}  # (site, call) -> its line

    def line(self, raw: str | bytes, number: int) -> None:
        text = _text(raw)
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            return
        data = json.loads(text, object_pairs_hook=_no_repeated_keys)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {_show(data)}")
        if self.header is None:
            self.spec = _spec_of(data)
            self.sites = {e.site for e in self.spec}
            self.header, self.header_line = data, number
            return
        if data.get("kind") == HEADER_KIND:
            raise ValueError(f"a second header (the header is line {self.header_line})")
        event = event_from_dict(data)
        if isinstance(event, FaultInjected) and event.source == SOURCE:
            self._fired(event, number)
        self.events.append(event)

    def _fired(self, event: FaultInjected, number: int) -> None:
        site = Site.parse(event.site)
        entries = parse(f"{site}={event.fault}").entries
        chain = entries[0].chain if len(entries) == 1 else ()
        if len(chain) != 1:
            raise ValueError(f"the fault {_show(event.fault)} is not one term")
        term = chain[0]
        if term.pct is not None or term.count is not None or term.at is not None:
            raise ValueError(
                f"the fault {_show(event.fault)} has firing conditions: a recorded fault is "
                f"its kind and arguments, e.g. {term.action!r}"
            )
        if term.kind == "off":
            raise ValueError("the fault 'off' never fires, so it is never recorded")
        if event.call < 1:
            raise ValueError(f"call numbers count from 1, not {event.call}")
        if site in self.sites:
            first = self.fired.setdefault((site, event.call), number)
            if first != number:
                raise ValueError(f"{site} call {event.call} already fired on line {first}")


def _text(raw: str | bytes) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"not UTF-8: byte {raw[exc.start]:#04x} at column {exc.start + 1} ({exc.reason})"
        ) from None


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {_show(key)} appears twice in one object")
            seen.add(key)
    return data


_HEADER_KEYS: Final = ("kind", "version", "spec", "seed", "scope")


def _spec_of(header: dict[str, Any]) -> Spec:
    if header.get("kind") != HEADER_KIND:
        raise ValueError(
            f'the first line must be the header ({{"kind": "{HEADER_KIND}", ...}}), '
            f"not kind {_show(header.get('kind'))}"
        )
    version = header.get("version")
    if type(version) is not int or version != _VERSION:
        raise ValueError(f"unsupported journal version {_show(version)}")
    unknown = [k for k in header if k not in _HEADER_KEYS]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        shown = ", ".join(map(_show, sorted(unknown)[:5]))
        raise ValueError(f"the header has no field(s) {shown}{more}")
    seed = header.get("seed")
    if not isinstance(seed, int | str) or isinstance(seed, bool):
        raise ValueError(f"the header's seed must be an int or a str, not {_show(seed)}")
    scope = header.get("scope", "")
    if not isinstance(scope, str):
        raise ValueError(f"the header's scope must be a str, not {_show(scope)}")
    for name, value in (("seed", seed), ("scope", scope)):
        if isinstance(value, str) and not _encodable(value):
            raise ValueError(f"the header's {name} is not text: {_show(value)}")
    text = header.get("spec")
    if not isinstance(text, str):
        raise ValueError(f"the header's spec must be a str, not {_show(text)}")
    try:
        return parse(text)
    except SpecError as exc:
        raise ValueError(_spec_problem(exc, "the header's spec")) from exc


def _encodable(text: str) -> bool:
    """False for text holding lone surrogates (JSON ``"\\ud800"``): not UTF-8 text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _spec_problem(exc: SpecError, what: str = "in") -> str:
    """A spec error on one line: the message, and where in which text."""
    text = exc.text if len(exc.text) <= 60 else f"{exc.text[:57]}..."
    hint = f"; did you mean {exc.suggestion!r}?" if exc.suggestion else ""
    return f"{exc.message}{hint} ({what} {text!r}, column {exc.column + 1})"


def _printable(text: str) -> str:
    """``text`` on one line, every character printable: a message is one line of output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
