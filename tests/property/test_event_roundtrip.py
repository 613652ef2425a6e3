"""Every event kind the package can write reads back equal, through ``Journal.dump``/``load``
and through a saved fault journal; and every ``Event`` subclass in ``pytest_resilience``
and ``faults`` is in the registry, so none can be written that cannot be read.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import sys
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import faults.journal
from faults.parser import parse
from faults.strategies import fault_specs
from pytest_resilience.core.events import Event, FaultInjected, event_type, event_types
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from faults.spec import Site

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pytest_resilience", "faults")
SETTINGS = settings(max_examples=60, deadline=None)

# Text as events may hold it, lone surrogates included: text decoded with
# errors="surrogateescape" (a stream's partial output, say) still round-trips.
TEXT = st.text(st.characters(exclude_categories=()), max_size=20)
SIMPLE: dict[object, st.SearchStrategy[Any]] = {
    int: st.integers(),
    float: st.floats(allow_nan=False),  # NaN is written and read, but is not equal to itself
    str: TEXT,
    bool: st.booleans(),
}


def values(hint: object) -> st.SearchStrategy[Any]:
    """Any value of a field annotated ``hint`` (the types a journal can hold)."""
    if hint in SIMPLE:
        return SIMPLE[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and args[1:] == (Ellipsis,):
        return st.lists(values(args[0]), max_size=4).map(tuple)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else values(a) for a in args))
    raise AssertionError(f"no strategy for {hint!r}: the registry should have refused it")


def events_of(cls: type[Event]) -> st.SearchStrategy[Event]:
    hints = typing.get_type_hints(cls)
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        has_default = f.default is not dataclasses.MISSING
        (optional if has_default else required)[f.name] = values(hints[f.name])
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


KINDS = sorted(event_types())
ANY_EVENT = st.sampled_from(KINDS).flatmap(lambda kind: events_of(event_type(kind)))


def through_journal(events: list[Event]) -> list[Event]:
    journal = Journal()
    for event in events:
        journal.append(event)
    out = io.StringIO()
    journal.dump(out)
    return Journal.load(io.StringIO(out.getvalue())).events()


def same(loaded: list[Event], events: list[Event]) -> None:
    assert loaded == events
    for got, want in zip(loaded, events, strict=True):  # tuples stay tuples, floats floats
        assert [type(v) for v in vars_of(got)] == [type(v) for v in vars_of(want)]


def vars_of(event: Event) -> list[object]:
    return [type(event), *(getattr(event, f.name) for f in dataclasses.fields(event))]


# ------------------------------------------------------------------------------ properties


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
@SETTINGS
def test_every_registered_kind_round_trips_through_a_journal(
    kind: str, data: st.DataObject
) -> None:
    events = data.draw(st.lists(events_of(event_type(kind)), min_size=1, max_size=5))
    same(through_journal(events), events)


@given(st.lists(ANY_EVENT, max_size=12), st.integers() | TEXT, TEXT)
@SETTINGS
def test_a_saved_fault_journal_reads_back_every_event(
    events: list[Event], seed: int | str, scope: str
) -> None:
    # Events of source "faults" are the injector's and are checked as faults: see below.
    events = [e for e in events if not (isinstance(e, FaultInjected) and e.source == "faults")]
    seed = seed.encode("utf-8", "replace").decode() if isinstance(seed, str) else seed
    scope = scope.encode("utf-8", "replace").decode()
    journal = Journal()
    for event in events:
        journal.append(event)
    out = io.StringIO()
    faults.journal.dump(journal, out, spec="llama.generate=none", seed=seed, scope=scope)
    recording = faults.journal.load(out.getvalue().splitlines())
    same(list(recording.events), events)
    assert (recording.seed, recording.scope) == (seed, scope)


@given(fault_specs(max_entries=3, max_terms=3), st.data())
@SETTINGS
def test_the_faults_an_injector_records_read_back_and_replay(
    spec: str, data: st.DataObject
) -> None:
    parsed = parse(spec)
    journal = Journal()
    expected: dict[Site, list[tuple[int, str]]] = {}
    for entry in parsed:
        calls = data.draw(st.lists(st.integers(1, 10**6), unique=True, max_size=4))
        terms = [t for t in entry.chain if t.kind != "off"]  # fault_specs draws no "off"
        pairs = [(call, data.draw(st.sampled_from(terms)).action) for call in calls]
        for call, action in data.draw(st.permutations(pairs)):  # threads append in any order
            journal.append(
                FaultInjected(
                    time=0.0, source="faults", site=str(entry.site), fault=action, call=call
                )
            )
        expected[entry.site] = sorted(
            (call, str(parse(f"{entry.site}={action}").entries[0].chain[0]))
            for call, action in pairs
        )
    out = io.StringIO()
    faults.journal.dump(journal, out, spec=parsed, seed=0)
    recording = faults.journal.load(out.getvalue().splitlines())
    assert list(recording.events) == journal.events()
    got = {site: sorted((c, str(t)) for c, t in pairs) for site, pairs in recording.fired().items()}
    assert got == expected
    for site, schedule in recording.schedules().items():
        fired = [d.call for d in (schedule.decide() for _ in range(12)) if d is not None]
        assert fired == [c for c, _ in expected[site] if c <= 12]


# ---------------------------------------------------------------------- the registry is whole


def event_classes_in(root: Path, packages: tuple[str, ...]) -> set[tuple[str, str, int]]:
    """(module, class name, line) of every class in the packages' sources that derives, by
    name and through any depth, from ``Event``: read from the source, nothing imported."""
    classes: list[tuple[str, str, int, list[str]]] = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    bases = [
                        b.id if isinstance(b, ast.Name) else b.attr
                        for b in node.bases
                        if isinstance(b, ast.Name | ast.Attribute)
                    ]
                    classes.append((module, node.name, node.lineno, bases))
    events = {"Event"} | {cls.__name__ for cls in event_types().values()}
    found: set[tuple[str, str, int]] = set()
    while True:
        new = {
            (module, name, line)
            for module, name, line, bases in classes
            if events.intersection(bases) and (module, name, line) not in found
        }
        if not new:
            return found
        found |= new
        events |= {name for _, name, _ in new}


BASE = ("pytest_resilience.core.events", "Event")


def unregistered(root: Path, packages: tuple[str, ...]) -> list[str]:
    registered = {(cls.__module__, cls.__qualname__) for cls in event_types().values()}
    return sorted(
        f"{module.replace('.', '/')}.py:{line}: {name}"
        for module, name, line in event_classes_in(root, packages)
        if (module, name) not in registered and (module, name) != BASE
    )


def test_every_event_class_in_the_packages_is_registered() -> None:
    missing = unregistered(ROOT, PACKAGES)
    assert not missing, (
        "Event subclasses that a journal could hold but not read back; register them in "
        "pytest_resilience/core/events.py (_HERE for its own classes, _ELSEWHERE for the others): "
        + ", ".join(missing)
    )


def test_every_event_class_imported_is_registered() -> None:
    # The same from the classes themselves, now that the registry has imported its modules.
    # (``@dataclass(slots=True)`` makes a new class: the one it replaced lingers among the
    # subclasses until collected, so only the class its module names counts.)
    stack: list[type[Event]] = [Event]
    found: list[type[Event]] = []
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        module = sys.modules.get(cls.__module__)
        in_packages = cls is not Event and cls.__module__.split(".")[0] in PACKAGES
        if in_packages and getattr(module, cls.__qualname__, None) is cls:
            found.append(cls)
    assert len(found) >= len(event_types())
    for cls in found:
        assert event_type(cls.kind) is cls, cls


def test_the_registry_check_finds_a_new_unregistered_class(tmp_path: Path) -> None:
    package = tmp_path / "faults"
    package.mkdir()
    (package / "extra.py").write_text(
        "from pytest_resilience.core.events import Event, FaultInjected\n"
        "from pytest_resilience.core import events\n"
        "class Direct(Event): ...\n"
        "class Deeper(Direct): ...\n"
        "class Qualified(events.FaultInjected): ...\n"
        "class NotAnEvent(ValueError): ...\n"
        "def make():\n"
        "    class Nested(Event): ...\n"
    )
    assert unregistered(tmp_path, ("faults",)) == [
        "faults/extra.py:3: Direct",
        "faults/extra.py:4: Deeper",
        "faults/extra.py:5: Qualified",
        "faults/extra.py:8: Nested",
    ]


def test_the_registry_holds_every_kind_once_and_each_under_its_own_kind() -> None:
    kinds = event_types()
    assert len({id(cls) for cls in kinds.values()}) == len(kinds)
    assert all(cls.kind == kind for kind, cls in kinds.items())
    assert {"fallback.exhausted", "scenario.step", "scenario.op", "fault.injected"} <= set(kinds)
    assert "event" not in kinds  # the base is never written
    with pytest.raises(ValueError, match="unknown event kind"):
        event_type("event")
