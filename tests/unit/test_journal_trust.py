"""A saved journal is checked as it is read: a corrupt one is refused naming its line, never
replayed as something else; and every event kind the package writes reads back, whichever
modules the reading process has imported. The journal's bound warns when it first drops.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import pytest

import pytest_resilience
from faults import Injector, JournalFileError
from faults.journal import HEADER_KIND, load
from pytest_resilience.core import events
from pytest_resilience.core.events import (
    DaemonSlow,
    Event,
    RetryScheduled,
    event_from_dict,
    event_type,
    register_event,
)
from pytest_resilience.core.journal import Journal, JournalFull
from tests.unit import fault_targets as t

if TYPE_CHECKING:
    from pathlib import Path

M = "py:tests.unit.fault_targets"
SITE = f"{M}:answer"


def header(**changes: object) -> str:
    data: dict[str, object] = {
        "kind": HEADER_KIND,
        "version": 1,
        "spec": f"{SITE}=@2none",
        "seed": 0,
        "scope": "",
    }
    return json.dumps({k: v for k, v in (data | changes).items() if v is not ...})


def fired(call: object = 2, site: str = SITE, fault: str = "none", **more: object) -> str:
    data = {"kind": "fault.injected", "time": 0.0, "source": "faults"}
    return json.dumps(data | {"site": site, "fault": fault, "call": call} | more)


def refused(lines: list[str] | list[bytes], line: int, words: str = "") -> str:
    with pytest.raises(JournalFileError) as info:
        load(lines)
    message = str(info.value)
    assert message.startswith(f"journal: line {line}: "), message
    assert words in message
    assert message.isprintable(), message  # one line, nothing that garbles a terminal
    return message


# ------------------------------------------------------------------- call numbers (#5)


@pytest.mark.parametrize("call", [0, -1, -(10**12)])
def test_a_call_number_below_one_is_refused(call: int) -> None:
    # Replayed, @0 or @-1 would have been no call number at all: the fault fired on every call.
    refused([header(), fired(call)], 2, f"call numbers count from 1, not {call}")


@pytest.mark.parametrize(
    ("call", "shown"),
    [(None, "null"), (True, "true"), (2.0, "2.0"), ("2", "'2'"), ([2], "a list of 1 item(s)")],
)
def test_a_call_number_that_is_not_an_integer_is_refused(call: object, shown: str) -> None:
    refused([header(), fired(call)], 2, f"call must be an integer, not {shown}")


def test_a_call_recorded_twice_for_a_site_is_refused() -> None:
    message = refused([header(), fired(2), "", fired(3), fired(2)], 5, "call 2 already fired")
    assert "on line 2" in message


def test_the_same_call_number_may_recur_for_a_site_outside_the_spec() -> None:
    # Another injector sharing the test's journal: its events are kept, not replayed.
    other = f"{M}:words"
    recording = load([header(), fired(1, site=other), fired(1, site=other)])
    assert len(recording.events) == 2
    assert recording.fired() == {recording.spec.entries[0].site: []}


def test_fired_calls_out_of_order_are_replayed_in_call_order() -> None:
    # decide() takes the call number without a lock and the event is appended after, so
    # two threads can write call 4 before call 3: such a journal is the injector's own.
    lines = [header(spec=f"{SITE}=@3none->@4none"), fired(4), fired(3)]
    with Injector.replay(lines) as replay:
        got = [t.answer(str(i)) for i in range(5)]
    assert got == ["yes, 0", "yes, 1", None, None, "yes, 4"]
    assert replay.injected(SITE) == 2


# ------------------------------------------------------------------------- recorded faults


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ("none->none", "is not one term"),
        ("30%none", "has firing conditions"),
        ("2*none", "has firing conditions"),
        ("@3none", "has firing conditions"),
        ("off", "'off' never fires"),
        (f"none;{M}:words=none", "is not one term"),
        ("timeout(", "(in "),
        ("refuse", "does not admit"),
    ],
)
def test_a_recorded_fault_must_be_one_plain_term_the_site_admits(fault: str, words: str) -> None:
    refused([header(), fired(fault=fault)], 2, words)


def test_a_recorded_site_must_parse() -> None:
    refused([header(), fired(site="llama.nope")], 2, "unknown site 'llama.nope'")


# ------------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"version": True}, "unsupported journal version true"),
        ({"version": 1.0}, "unsupported journal version 1.0"),
        ({"version": ...}, "unsupported journal version null"),
        ({"spec": ...}, "the header's spec must be a str, not null"),
        ({"spec": 7}, "the header's spec must be a str, not 7"),
        ({"spec": "llama.generate="}, "the header's spec 'llama.generate='"),
        ({"seed": ...}, "the header's seed must be an int or a str, not null"),
        ({"seed": 1.5}, "the header's seed must be an int or a str, not 1.5"),
        ({"seed": "\ud800"}, "the header's seed is not text: '\\ud800'"),
        ({"scope": 3}, "the header's scope must be a str, not 3"),
        ({"scope": "\udcff"}, "the header's scope is not text"),
        ({"route": "wire"}, "the header has no field(s) 'route'"),
    ],
)
def test_a_malformed_header_is_refused(changes: dict[str, object], words: str) -> None:
    refused([header(**changes), fired()], 1, words)


def test_the_scope_may_be_left_out_and_a_byte_order_mark_may_lead() -> None:
    recording = load(["\ufeff" + header(scope=...), fired()])
    assert (recording.scope, recording.seed, len(recording.events)) == ("", 0, 1)


@pytest.mark.parametrize(
    ("lines", "line", "words"),
    [
        ([], 1, "empty: no header line"),
        (["", "  ", "\n"], 1, "empty: no header line"),
        ([header(), fired(), header()], 3, "a second header (the header is line 1)"),
        ([fired()], 1, "the first line must be the header"),
    ],
)
def test_the_header_comes_first_and_once(lines: list[str], line: int, words: str) -> None:
    refused(lines, line, words)


# ------------------------------------------------------------------ events and their fields


@pytest.mark.parametrize(
    ("event", "words"),
    [
        ({"kind": "retry.scheduled", "time": 0, "attempt": 1}, "lacks the field(s) delay"),
        ({"kind": "retry.scheduled", "time": "0", "attempt": 1, "delay": 1}, "time must be a n"),
        ({"kind": "retry.scheduled", "time": 0, "attempt": 1.5, "delay": 1}, "attempt must be"),
        ({"kind": "health.checked", "time": 0, "check": "c", "healthy": 1, "message": ""}, "true"),
        ({"kind": "fallback.used", "time": 0, "step": "s", "index": 1, "after": [1]}, "a list of"),
        ({"kind": "fallback.used", "time": 0, "step": "s", "index": 1, "after": "ab"}, "a list"),
        ({"kind": "daemon.up", "time": 0, "source": None}, "source must be a string, not null"),
        ({"kind": "daemon.up", "time": 10**400}, "a number a float can hold"),
        ({"kind": 5, "time": 0}, "unknown event kind 5"),
        ({"kind": ["daemon.up"], "time": 0}, "unknown event kind a list of 1 item(s)"),
        ({"time": 0}, "the event has no kind"),
        ({"kind": "event", "time": 0}, "unknown event kind 'event'"),
    ],
)
def test_an_event_with_a_bad_field_is_refused(event: dict[str, object], words: str) -> None:
    refused([header(), fired(), json.dumps(event)], 3, words)


def test_integers_in_float_fields_are_read_as_floats() -> None:
    event = event_from_dict({"kind": "daemon.slow", "time": 3, "latency": 2, "threshold": 1})
    assert isinstance(event, DaemonSlow)
    assert [type(x) for x in (event.time, event.latency, event.threshold)] == [float] * 3


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"kind": "daemon.up", "time": 0, "time": 1}', "the key 'time' appears twice"),
        ('{"kind": "daemon.up", "time": 0, "x": {"a": 1, "a": 2}}', "the key 'a' appears twice"),
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deep"),
        ('{"kind": "daemon.up", "time": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested too deep"),
        ('{"kind": "daemon.up", "time": 1' + "0" * 5000 + "}", "line 3: "),
        ('"daemon.up"', "expected a JSON object, got 'daemon.up'"),
        ("{\x00}", "line 3: "),
    ],
)
def test_json_that_is_not_one_flat_event_is_refused(text: str, words: str) -> None:
    refused([header(), fired(), text], 3, words)


def test_bytes_that_are_not_utf8_are_refused_naming_line_and_column(tmp_path: Path) -> None:
    good = (header() + "\n" + fired() + "\n").encode()
    path = tmp_path / "latin.jsonl"
    latin = b'{"kind": "daemon.up", "time": 0, "source": "caf\xe9"}'
    path.write_bytes(good + latin + b"\n")
    with pytest.raises(JournalFileError) as info:
        load(path)
    column = latin.index(b"\xe9") + 1
    assert str(info.value) == (
        f"{path}: line 3: not UTF-8: byte 0xe9 at column {column} (invalid continuation byte)"
    )
    # the same from lines given as bytes
    refused([*good.splitlines(), b"\xff"], 3, "not UTF-8: byte 0xff at column 1")


def test_a_deep_journal_file_is_a_journal_file_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text(header() + "\n" + '{"a": ' * 200_000 + "\n")
    with pytest.raises(JournalFileError, match=r"deep\.jsonl: line 2: JSON nested too deep"):
        Injector.replay(path)


def test_control_characters_from_the_file_stay_escaped_in_the_message() -> None:
    message = refused([header(spec="llama.generat\x1b[2J\n=none")], 1, "unknown site")
    assert "\\x1b" in message
    assert "\x1b" not in message


def test_journal_load_refuses_deep_json_with_a_value_error() -> None:
    with pytest.raises(ValueError, match="journal line 2: JSON nested too deep"):
        Journal.load(['{"kind": "daemon.up", "time": 0}', "[" * 100_000])
    with pytest.raises(ValueError, match="journal line 1: expected a JSON object, got 3"):
        Journal.load(["3"])


# ------------------------------------------------------------------------- the registry (#6)


def test_events_defined_outside_events_py_load_in_a_fresh_process() -> None:
    # Before the registry, a process that had not imported pytest_resilience.core.fallback or
    # faults.scenario (the plugin replaying a journal, say) could not read their events.
    lines = [
        header(spec="", seed=1),
        '{"kind": "fallback.exhausted", "time": 1.0, "source": "f", "failures": ["a: X"]}',
        '{"kind": "scenario.step", "time": 2.0, "index": 1, "op": "chat"}',
        '{"kind": "scenario.op", "time": 3.0, "op": "chat", "outcome": "ok", "detail": "d"}',
    ]
    code = (
        "import json, sys\n"
        "from faults.journal import load\n"
        "assert 'pytest_resilience.core.fallback' not in sys.modules\n"
        "assert 'faults.scenario' not in sys.modules\n"
        "recording = load(json.loads(sys.argv[1]))\n"
        "print(json.dumps([type(e).__name__ for e in recording.events]))\n"
        "print(json.dumps([e.to_dict() for e in recording.events]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(lines)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    names, events = map(json.loads, done.stdout.splitlines())
    assert names == ["FallbackExhausted", "ScenarioStep", "ScenarioOp"]
    assert events == [
        {"kind": "fallback.exhausted", "time": 1.0, "source": "f", "failures": ["a: X"]},
        json.loads(lines[2]) | {"source": "", "detail": ""},
        json.loads(lines[3]) | {"source": ""},
    ]


def test_a_subclass_that_is_not_registered_is_not_read_back() -> None:
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Unlisted(Event):
        kind: ClassVar[str] = "test.unlisted"
        note: str

    with pytest.raises(ValueError, match=r"unknown event kind 'test\.unlisted'"):
        event_from_dict(Unlisted(time=0.0, note="n").to_dict())


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a test registers is forgotten after it."""
    monkeypatch.setattr(events, "_registry", dict(events._registry))


@pytest.mark.usefixtures("registry")
def test_an_application_registers_its_own_event_kinds() -> None:
    @register_event
    @dataclass(frozen=True, slots=True, kw_only=True)
    class CacheMissed(Event):
        kind: ClassVar[str] = "test.cache_missed"
        key: str
        size: int | None = None
        tags: tuple[str, ...] = ()

    assert register_event(CacheMissed) is CacheMissed  # again: a no-op
    event = CacheMissed(time=1.0, key="k", tags=("a", "b"))
    assert event_from_dict(event.to_dict()) == event
    assert event_type("test.cache_missed") is CacheMissed
    with pytest.raises(ValueError, match="size must be null or an integer, not 'x'"):
        event_from_dict(event.to_dict() | {"size": "x"})


@pytest.mark.usefixtures("registry")
def test_a_class_of_a_module_imported_again_replaces_its_registration() -> None:
    def define() -> type[Event]:  # as the module's code runs again, on a reload
        @register_event
        @dataclass(frozen=True, slots=True, kw_only=True)
        class Reloaded(Event):
            kind: ClassVar[str] = "test.reloaded"

        return Reloaded

    first, again = define(), define()
    assert first is not again
    assert event_type("test.reloaded") is again
    assert type(event_from_dict({"kind": "test.reloaded", "time": 0})) is again


@pytest.mark.usefixtures("registry")
def test_register_event_refuses_a_taken_kind_and_fields_a_journal_cannot_hold() -> None:
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Impostor(Event):
        kind: ClassVar[str] = "retry.scheduled"

    with pytest.raises(ValueError, match=r"kind 'retry\.scheduled' is .*RetryScheduled's"):
        register_event(Impostor)
    assert event_type("retry.scheduled") is RetryScheduled

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Holder(Event):
        kind: ClassVar[str] = "test.holder"
        data: dict[str, int]

    with pytest.raises(TypeError, match=r"Holder\.data: a journal holds str, int"):
        register_event(Holder)
    with pytest.raises(TypeError, match="a dataclass subclass of Event"):
        register_event(int)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="not Event itself"):
        register_event(Event)


# --------------------------------------------------------------------------- the bound (#20)


def test_a_full_journal_warns_once_naming_its_limit_and_how_to_raise_it() -> None:
    journal = Journal(maxlen=2)
    journal.append(RetryScheduled(time=0.0, attempt=1, delay=1.0))
    journal.append(RetryScheduled(time=1.0, attempt=2, delay=1.0))
    with pytest.warns(JournalFull) as caught:
        journal.append(RetryScheduled(time=2.0, attempt=3, delay=1.0))
    (warning,) = caught
    text = str(warning.message)
    assert "keeps the last 2 events" in text
    assert "Journal(maxlen=...)" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        for i in range(10):
            journal.append(RetryScheduled(time=3.0 + i, attempt=4 + i, delay=1.0))
        journal.clear()
        for i in range(5):
            journal.append(RetryScheduled(time=20.0 + i, attempt=i, delay=1.0))
    assert (len(journal), journal.dropped) == (2, 3)


def test_the_full_journal_warning_points_at_the_code_that_appended() -> None:
    # Not run under mutation testing (pyproject's [tool.mutmut]): the trampolines there add
    # frames between append() and the warning.
    journal = Journal(maxlen=1)
    journal.append(RetryScheduled(time=0.0, attempt=1, delay=1.0))
    with pytest.warns(JournalFull) as caught:
        journal.append(RetryScheduled(time=1.0, attempt=2, delay=1.0))
    (warning,) = caught
    assert warning.filename == __file__


def test_the_warning_comes_after_the_listeners_have_the_event() -> None:
    journal = Journal(maxlen=1)
    seen: list[Event] = []
    journal.subscribe(seen.append)
    journal.append(RetryScheduled(time=0.0, attempt=1, delay=1.0))
    last = RetryScheduled(time=1.0, attempt=2, delay=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(JournalFull):
            journal.append(last)
    assert seen[-1] == last
    assert journal.events() == [last]


def test_a_journal_that_never_drops_never_warns() -> None:
    journal = Journal(maxlen=3)
    for i in range(3):
        journal.append(RetryScheduled(time=float(i), attempt=i, delay=1.0))
    assert journal.dropped == 0  # -W error: any warning would have failed the test


def test_journal_full_is_exported_from_the_package() -> None:
    assert pytest_resilience.JournalFull is JournalFull
    assert issubclass(JournalFull, UserWarning)


# ------------------------------------------------------------------------------ replaying


def test_a_validated_journal_still_replays_what_was_saved() -> None:
    journal = Journal()
    with Injector(f"{SITE}=@2none->@5none", journal=journal) as run:
        for i in range(6):
            t.answer(str(i))
    buffer = io.StringIO()
    run.dump(buffer)
    text = buffer.getvalue()
    recording = load(text.splitlines())
    assert [(c, str(term)) for c, term in recording.fired()[run.spec.entries[0].site]] == [
        (2, "none"),
        (5, "none"),
    ]
    assert load(line.encode() for line in text.splitlines()) == recording
