"""Checkpoints on disk, and execute_with_recovery."""

from __future__ import annotations

import json
import os
import pickle
from typing import TYPE_CHECKING, Any

import pytest
import tenacity

from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import CheckpointError, ResilienceError, RetryError
from pytest_resilience.core.events import CheckpointSaved, Recovered
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.recovery import (
    Checkpoint,
    CheckpointStore,
    RecoveryContext,
    execute_with_recovery,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "checkpoints")


# ------------------------------------------------------------------------- the store


def test_save_then_load_round_trips_and_writes_a_readable_header(store: CheckpointStore) -> None:
    state = {"next": 3, "parts": ["a", "b", "ç"], "score": 0.5, "done": False, "none": None}
    saved = store.save("job", state, step=3)

    assert saved == Checkpoint("job", 3, state)
    assert store.latest("job") == saved
    assert store.load("job") == saved
    header = json.loads(store.path("job").read_bytes().split(b"\n", 1)[0])
    assert header["format"] == "pytest-resilience-checkpoint"
    assert (header["version"], header["key"], header["step"]) == (1, "job", 3)
    assert len(header["sha256"]) == 64


def test_the_latest_save_wins_and_leaves_no_temporary_file(store: CheckpointStore) -> None:
    for step in range(5):
        store.save("job", {"step": step}, step=step)
    assert store.load("job") == Checkpoint("job", 4, {"step": 4})
    assert sorted(p.name for p in store.directory.iterdir()) == ["job.ckpt"]


def test_tuples_come_back_as_lists(store: CheckpointStore) -> None:
    assert store.save("t", {"pair": (1, 2)}, step=0).state == {"pair": [1, 2]}
    assert store.load("t").state == {"pair": [1, 2]}


def test_a_missing_checkpoint(store: CheckpointStore) -> None:
    assert store.latest("nothing") is None
    with pytest.raises(CheckpointError, match="no checkpoint has been saved") as info:
        store.load("nothing")
    assert info.value.path == str(store.path("nothing"))


def corrupt_cases() -> dict[str, tuple[Callable[[bytes], bytes], str]]:
    def flip_last(raw: bytes) -> bytes:
        return raw[:-2] + bytes([raw[-2] ^ 0x01]) + raw[-1:]

    return {
        "empty": (lambda raw: b"", "the file is empty"),
        "cut in the payload": (lambda raw: raw[:-5], "truncated: "),
        "cut in the header": (lambda raw: raw[:20], "no header line"),
        "flipped payload bit": (flip_last, "checksum mismatch"),
        "trailing bytes": (lambda raw: raw + b"xx", "2 unexpected bytes after the payload"),
        "not json": (lambda raw: b"hello world\nmore\n", "the header is not JSON"),
        "foreign json": (
            lambda raw: b'{"format": "other-tool", "version": 1}\n{}',
            "a foreign file (format 'other-tool'",
        ),
        "json list": (lambda raw: b"[1, 2]\n{}", "a foreign file (format None"),
        "future version": (
            lambda raw: raw.replace(b'"version": 1', b'"version": 9', 1),
            "unsupported format version 9",
        ),
        "no step": (lambda raw: raw.replace(b'"step": 7', b'"stop": 7', 1), "malformed header"),
    }


@pytest.mark.parametrize("case", list(corrupt_cases()))
def test_a_bad_file_is_a_clear_checkpoint_error(store: CheckpointStore, case: str) -> None:
    damage, problem = corrupt_cases()[case]
    store.save("job", {"parts": ["x" * 40], "n": 7}, step=7)
    path = store.path("job")
    path.write_bytes(damage(path.read_bytes()))

    with pytest.raises(CheckpointError) as info:
        store.latest("job")

    assert info.value.path == str(path)
    assert problem in info.value.problem
    assert str(path) in str(info.value)
    assert isinstance(info.value, ResilienceError)


def test_a_file_renamed_from_another_key_is_refused(store: CheckpointStore) -> None:
    store.save("alpha", {"x": 1}, step=1)
    os.replace(store.path("alpha"), store.path("beta"))
    with pytest.raises(CheckpointError, match="written for key 'alpha', not 'beta'"):
        store.latest("beta")


def test_an_unreadable_file_is_a_checkpoint_error(store: CheckpointStore) -> None:
    store.path("job").mkdir()  # reading a directory fails with an OSError
    with pytest.raises(CheckpointError, match="cannot be read"):
        store.latest("job")


@pytest.mark.parametrize(
    "key", ["../escape", "a/b", "a\\b", "", ".hidden", "a..b", "x" * 129, "sp ace", "é"]
)
def test_keys_that_are_not_plain_names_are_rejected(store: CheckpointStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid checkpoint key"):
        store.save(key, {}, step=0)
    with pytest.raises(ValueError, match="invalid checkpoint key"):
        store.latest(key)
    assert list(store.directory.parent.glob("escape*")) == []


def test_plain_keys_are_accepted(store: CheckpointStore) -> None:
    for key in ("job", "Job-1.v2_x", "0", "a" * 128):
        store.save(key, {}, step=0)
    assert store.keys() == sorted(["job", "Job-1.v2_x", "0", "a" * 128])


@pytest.mark.parametrize(
    ("state", "step", "error"),
    [
        ({"f": object()}, 0, TypeError),
        ({"nan": float("nan")}, 0, ValueError),
        ({}, -1, ValueError),
        ({}, True, ValueError),
        ({}, 1.5, ValueError),
    ],
)
def test_bad_state_or_step_is_refused_and_keeps_the_old_checkpoint(
    store: CheckpointStore, state: Any, step: Any, error: type[Exception]
) -> None:
    store.save("job", {"ok": True}, step=1)
    with pytest.raises(error):
        store.save("job", state, step)
    assert store.load("job") == Checkpoint("job", 1, {"ok": True})


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary_file(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save("job", {"n": 1}, step=1)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        store.save("job", {"n": 2}, step=2)
    monkeypatch.undo()

    assert store.load("job").step == 1
    assert sorted(p.name for p in store.directory.iterdir()) == ["job.ckpt"]


def test_clear_removes_the_checkpoint_and_leftover_temporary_files(
    store: CheckpointStore,
) -> None:
    store.save("job", {}, step=0)
    store.save("other", {}, step=0)
    (store.directory / ".job.abc123.tmp").write_bytes(b"half a checkpoint")  # left by a kill

    assert store.clear("job")
    assert not store.clear("job")
    assert sorted(p.name for p in store.directory.iterdir()) == ["other.ckpt"]


def test_save_records_an_event_on_the_clock(tmp_path: Path) -> None:
    journal, clock = Journal(), VirtualClock(start=5.0)
    store = CheckpointStore(tmp_path, clock=clock, journal=journal)
    store.save("job", [], step=2)
    assert [(e.key, e.step, e.time) for e in journal.events(CheckpointSaved)] == [("job", 2, 5.0)]


def test_checkpoint_error_pickles(tmp_path: Path) -> None:
    error = CheckpointError(str(tmp_path / "x.ckpt"), "truncated")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.problem, str(copy)) == (error.path, error.problem, str(error))


# ------------------------------------------------------------------ execute_with_recovery


class Job:
    """Processes items one by one, saving a checkpoint after each; can fail at given items."""

    def __init__(self, items: int, fail_at: set[int] | None = None, exc: Exception | None = None):
        self.items = items
        self.fail_at = set(fail_at or ())
        self.exc = exc or ConnectionError("daemon lost")
        self.processed: list[int] = []
        self.started_from: list[int] = []

    def __call__(self, rec: RecoveryContext) -> int:
        state = rec.state or {"next": 0, "total": 0}
        self.started_from.append(state["next"])
        for i in range(state["next"], self.items):
            if i in self.fail_at:
                self.fail_at.discard(i)
                raise self.exc
            self.processed.append(i)
            state = {"next": i + 1, "total": state["total"] + i}
            rec.save(state, step=i + 1)
        return int(state["total"])


def test_success_at_once_records_nothing_and_clears_the_checkpoint(
    store: CheckpointStore,
) -> None:
    journal = Journal()
    job = Job(4)
    result = execute_with_recovery(
        job, on=ConnectionError, checkpoint_key="job", store=store, journal=journal
    )
    assert result == 0 + 1 + 2 + 3
    assert journal.events(Recovered) == []
    assert store.latest("job") is None


def test_a_failure_resumes_from_the_last_checkpoint_without_redoing_work(
    store: CheckpointStore,
) -> None:
    journal = Journal()
    job = Job(6, fail_at={4})
    result = execute_with_recovery(
        job, on=ConnectionError, checkpoint_key="job", store=store, journal=journal
    )
    assert result == sum(range(6))
    assert job.processed == [0, 1, 2, 3, 4, 5]  # items 0-3 were not processed twice
    assert job.started_from == [0, 4]
    assert [(e.key, e.how) for e in journal.events(Recovered)] == [("job", "checkpoint")]


def test_a_checkpoint_left_by_an_earlier_process_is_resumed(store: CheckpointStore) -> None:
    store.save("job", {"next": 3, "total": 3}, step=3)
    journal = Journal()
    job = Job(5)
    result = execute_with_recovery(
        job, on=ConnectionError, checkpoint_key="job", store=store, journal=journal
    )
    assert result == sum(range(5))
    assert job.processed == [3, 4]
    assert [e.how for e in journal.events(Recovered)] == ["checkpoint"]


def test_without_a_checkpoint_the_fallback_answers(store: CheckpointStore) -> None:
    journal = Journal()
    job = Job(3, fail_at={0})
    result = execute_with_recovery(
        job,
        on=ConnectionError,
        fallback=lambda: -1,
        checkpoint_key="job",
        store=store,
        journal=journal,
    )
    assert result == -1
    assert job.started_from == [0]  # nothing to resume from: no second run
    assert [e.how for e in journal.events(Recovered)] == ["fallback"]


def test_a_resumed_run_that_fails_again_falls_back_and_keeps_the_checkpoint(
    store: CheckpointStore,
) -> None:
    journal = Journal()
    job = Job(6, fail_at={2, 4})
    result = execute_with_recovery(
        job,
        on=ConnectionError,
        fallback=lambda: -1,
        checkpoint_key="job",
        store=store,
        journal=journal,
    )
    assert result == -1
    assert job.started_from == [0, 2]
    assert [e.how for e in journal.events(Recovered)] == ["fallback"]
    assert store.load("job").step == 4  # a later run can resume from here


def test_without_a_fallback_the_failure_propagates(store: CheckpointStore) -> None:
    job = Job(3, fail_at={0})
    with pytest.raises(ConnectionError, match="daemon lost"):
        execute_with_recovery(job, on=ConnectionError, checkpoint_key="job", store=store)


def test_an_exception_outside_on_propagates_at_once(store: CheckpointStore) -> None:
    used: list[str] = []

    def fallback() -> int:
        used.append("fallback")
        return 0

    job = Job(5, fail_at={3}, exc=KeyError("bug"))
    with pytest.raises(KeyError):
        execute_with_recovery(
            job,
            on=ConnectionError,
            fallback=fallback,
            checkpoint_key="job",
            store=store,
        )
    assert used == []
    assert job.started_from == [0]


def test_in_memory_checkpoints_without_a_store() -> None:
    journal = Journal()
    job = Job(5, fail_at={2})
    assert execute_with_recovery(job, on=ConnectionError, journal=journal) == sum(range(5))
    assert job.started_from == [0, 2]
    (event,) = journal.events(Recovered)
    assert event.how == "checkpoint"
    assert event.key == "Job"  # named after the callable


def test_a_retry_runner_decides_and_every_attempt_resumes(store: CheckpointStore) -> None:
    journal = Journal()
    job = Job(8, fail_at={2, 4, 6})
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ConnectionError),
        stop=tenacity.stop_after_attempt(5),
        sleep=lambda _: None,  # no real waiting
        reraise=True,
    )
    result = execute_with_recovery(
        job, on=ConnectionError, checkpoint_key="job", store=store, retry=retrying, journal=journal
    )
    assert result == sum(range(8))
    assert job.started_from == [0, 2, 4, 6]
    assert [e.how for e in journal.events(Recovered)] == ["checkpoint"]


def test_a_retry_without_checkpoints_is_reported_as_retry() -> None:
    journal = Journal()
    calls: list[int] = []

    def flaky(rec: RecoveryContext) -> str:
        calls.append(rec.attempt)
        if len(calls) < 3:
            raise TimeoutError
        return "done"

    def three_times(fn: Callable[[], str]) -> str:
        for _ in range(2):
            try:
                return fn()
            except TimeoutError:
                pass
        return fn()

    assert execute_with_recovery(flaky, on=TimeoutError, retry=three_times, journal=journal) == (
        "done"
    )
    assert calls == [1, 2, 3]
    assert [e.how for e in journal.events(Recovered)] == ["retry"]


def test_a_retry_error_whose_last_failure_matches_falls_back() -> None:
    def gave_up(fn: Callable[[], str]) -> str:
        try:
            return fn()
        except ConnectionError as exc:
            raise RetryError(3, exc) from exc

    def always_down(rec: RecoveryContext) -> str:
        raise ConnectionError("down")

    result = execute_with_recovery(
        always_down, on=ConnectionError, retry=gave_up, fallback=lambda: "cached"
    )
    assert result == "cached"


def test_clear_false_keeps_the_finished_checkpoint(store: CheckpointStore) -> None:
    execute_with_recovery(Job(3), on=ConnectionError, checkpoint_key="j", store=store, clear=False)
    assert store.load("j").state == {"next": 3, "total": 3}


def test_a_store_needs_a_key(store: CheckpointStore) -> None:
    with pytest.raises(ValueError, match="checkpoint_key"):
        execute_with_recovery(Job(1), on=ConnectionError, store=store)
    with pytest.raises(ValueError, match="invalid checkpoint key"):
        execute_with_recovery(Job(1), on=ConnectionError, store=store, checkpoint_key="../x")
