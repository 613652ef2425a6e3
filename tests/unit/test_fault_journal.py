"""Saving a fault run's journal and replaying it: the same faults at the same call numbers,
whatever the seed; bad files are refused naming the line."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import pytest

import faults
from faults import Injector, JournalFileError
from faults.journal import HEADER_KIND, load
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.events import FaultInjected
from pytest_resilience.core.journal import Journal
from tests.unit import fault_targets as t

if TYPE_CHECKING:
    from pathlib import Path

M = "py:tests.unit.fault_targets"
SPEC = f"{M}:answer=40%none->20%latency(1s, 500ms);{M}:words=30%truncate(after=1)"


def _run(injector: Injector) -> list[object]:
    """A fixed workload; what it saw."""
    seen: list[object] = []
    with injector:
        for i in range(30):
            seen.append(t.answer(str(i)))
            seen.append(list(t.words("a b c")))
    return seen


def _faults_of(journal: Journal) -> list[tuple[str, str, int]]:
    return [(e.site, e.fault, e.call) for e in journal.events(FaultInjected)]


def test_two_runs_with_the_same_seed_write_identical_journals() -> None:
    runs = []
    for _ in range(2):
        journal, clock = Journal(), VirtualClock()
        seen = _run(Injector(SPEC, seed=11, scope="t", clock=clock, journal=journal))
        runs.append((journal.events(), seen))
    assert runs[0] == runs[1]
    kinds = {e.fault.split("(")[0] for e in runs[0][0] if isinstance(e, FaultInjected)}
    assert kinds == {"none", "latency", "truncate"}


def test_a_saved_journal_replays_the_same_faults_with_another_seed(tmp_path: Path) -> None:
    first = Journal()
    original = Injector(SPEC, seed=11, clock=VirtualClock(), journal=first)
    seen = _run(original)
    path = tmp_path / "run.jsonl"
    original.save(path)

    header = json.loads(path.read_text().splitlines()[0])
    canonical = str(faults.parse(SPEC))
    assert header == {"kind": HEADER_KIND, "version": 1, "spec": canonical, "seed": 11, "scope": ""}

    other_seed = Journal()
    _run(Injector(SPEC, seed=12, clock=VirtualClock(), journal=other_seed))
    assert _faults_of(other_seed) != _faults_of(first)  # the seed does decide a fresh run

    again = Journal()
    replayed = Injector.replay(path, seed=12, clock=VirtualClock(), journal=again)
    assert _run(replayed) == seen
    assert _faults_of(again) == _faults_of(first)
    assert replayed.calls(f"{M}:answer") == original.calls(f"{M}:answer") == 30


def test_replay_from_lines_keeps_other_events_for_reading() -> None:
    journal = Journal()
    journal.append(FaultInjected(time=0.0, source="proxy", site="daemon.stream", fault="x", call=9))
    with faults.inject(f"{M}:answer=@2none", journal=journal) as run:
        t.answer("a")
        t.answer("b")
    buffer = io.StringIO()
    run.dump(buffer)
    recording = load(buffer.getvalue().splitlines())
    assert len(recording.events) == 2
    fired = recording.fired()
    assert [(call, str(term)) for call, term in fired[run.spec.entries[0].site]] == [(2, "none")]
    with Injector.replay(buffer.getvalue().splitlines()) as replay:
        assert [t.answer("x") for _ in range(3)] == ["yes, x", None, "yes, x"]
    assert replay.injected(f"{M}:answer") == 1


def _header(**changes: object) -> str:
    data: dict[str, object] = {"kind": HEADER_KIND, "version": 1, "spec": "", "seed": 0}
    return json.dumps(data | changes)


EVENT = (
    '{"kind": "fault.injected", "time": 0, "source": "faults", "site": "%s", "fault": "%s", '
    '"call": 1}'
)


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        ([], "empty: no header line"),
        (['{"kind": "fault.injected"}'], "line 1: the first line must be the header"),
        ([_header(version=2)], "line 1: unsupported journal version 2"),
        ([_header(spec="llama.nope=none")], "line 1: unknown site"),
        ([_header(seed=[1])], "line 1: the header's seed"),
        ([_header(), "", "{not json"], "line 3: "),
        ([_header(), "[1, 2]"], "line 2: expected a JSON object"),
        ([_header(), '{"kind": "no.such.event", "time": 0}'], "line 2: unknown event kind"),
        ([_header(), EVENT % ("llama.generate", "timeout(")], "line 2: "),
        ([_header(), EVENT % ("llama.generate", "stall(after=1)")], "line 2: .*does not admit"),
    ],
)
def test_a_bad_file_is_refused_naming_the_line(lines: list[str], words: str) -> None:
    with pytest.raises(JournalFileError, match=words):
        load(lines)


def test_a_bad_file_on_disk_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(_header() + "\n{oops\n")
    with pytest.raises(JournalFileError, match=r"bad\.jsonl: line 2"):
        Injector.replay(path)
