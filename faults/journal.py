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
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Final

from faults.schedule import Schedule
from faults.sites import SOURCE
from faults.spec import Site, Spec, SpecError, parse
from pytest_resilience.events import FaultInjected, event_from_dict

if TYPE_CHECKING:
    from collections.abc import Iterable

    from faults.spec import Term
    from pytest_resilience.events import Event, Journal

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


def load(source: str | os.PathLike[str] | Iterable[str]) -> Recording:
    """Read a journal saved by :func:`save` / :func:`dump` (a path, or its lines).

    Raises :class:`JournalFileError` naming the line when the header is missing or wrong, a
    line is not JSON or not an event, or a recorded fault does not parse.
    """
    if isinstance(source, str | os.PathLike):
        where = os.fspath(source)
        with open(source, encoding="utf-8") as stream:
            return _read(stream, where)
    return _read(source, "journal")


def _read(lines: Iterable[str], where: str) -> Recording:
    header: dict[str, Any] | None = None
    events: list[Event] = []
    spec = Spec()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            if header is None:
                header, spec = data, _spec_of(data)
                continue
            event = event_from_dict(data)
            if isinstance(event, FaultInjected) and event.source == SOURCE:
                Site.parse(event.site)
                parse(f"{event.site}={event.fault}")
            events.append(event)
        except (ValueError, TypeError) as exc:  # SpecError and JSONDecodeError are ValueErrors
            problem = exc.message if isinstance(exc, SpecError) else str(exc)
            raise JournalFileError(f"{where}: line {number}: {problem}") from exc
    if header is None:
        raise JournalFileError(f"{where}: empty: no header line")
    seed = header.get("seed", 0)
    return Recording(spec, seed, str(header.get("scope", "")), tuple(events))


def _spec_of(header: dict[str, Any]) -> Spec:
    if header.get("kind") != HEADER_KIND:
        raise ValueError(
            f'the first line must be the header ({{"kind": "{HEADER_KIND}", ...}}), '
            f"not kind {header.get('kind')!r}"
        )
    if header.get("version") != _VERSION:
        raise ValueError(f"unsupported journal version {header.get('version')!r}")
    seed = header.get("seed")
    if not isinstance(seed, int | str) or isinstance(seed, bool):
        raise ValueError(f"the header's seed must be an int or a str, not {seed!r}")
    text = header.get("spec")
    if not isinstance(text, str):
        raise ValueError("the header has no spec text")
    return parse(text)
