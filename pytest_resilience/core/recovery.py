"""Recovery: work that resumes from its last checkpoint, or falls back, after a failure.

::

    store = CheckpointStore(cache_dir / "checkpoints", journal=journal)

    def summarise(rec: RecoveryContext) -> str:
        done = rec.state or {"next": 0, "parts": []}       # resume where the last run stopped
        for i in range(done["next"], len(chunks)):
            done["parts"].append(backend.generate(chunks[i]))
            done["next"] = i + 1
            rec.save(done, step=i + 1)
        return " ".join(done["parts"])

    text = execute_with_recovery(
        summarise, on=(BackendError, TimeoutError), checkpoint_key="summary", store=store,
        fallback=lambda: "(no summary)",
    )

:func:`execute_with_recovery` runs ``fn``; when it fails with an exception in ``on`` and a
checkpoint exists, it runs ``fn`` once more, resuming from that checkpoint; when that fails
too, or there is nothing to resume from, it calls ``fallback``. A ``Recovered`` event says
how the call recovered: ``"checkpoint"``, ``"retry"`` or ``"fallback"``.

:class:`CheckpointStore` keeps the latest checkpoint of each key in one file,
``<directory>/<key>.ckpt``, written atomically (a temporary file in the same directory,
written, flushed and fsynced, then ``os.replace``, then the directory fsynced), so a process
killed at any moment leaves the previous complete checkpoint or the new one, never a mix.
The file is one JSON header line, then the payload::

    {"format": "pytest-resilience-checkpoint", "version": 1, "key": "summary", "step": 3,
     "size": 57, "sha256": "9f2c..."}
    {"next": 3, "parts": [...]}

Reading checks the header and the payload's size and SHA-256, so a truncated, corrupt or
foreign file, or one renamed from another key, raises
:class:`~pytest_resilience.core.errors.CheckpointError` naming the file and the problem instead
of handing back a wrong state. State is JSON: tuples come back as lists, and NaN is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .clock import Clock, SystemClock
from .errors import CheckpointError, RetryError
from .events import CheckpointSaved, Recovered

if TYPE_CHECKING:
    from collections.abc import Callable

    from .journal import Journal

__all__ = ["Checkpoint", "CheckpointStore", "RecoveryContext", "execute_with_recovery"]

T = TypeVar("T")

FORMAT = "pytest-resilience-checkpoint"
VERSION = 1
SUFFIX = ".ckpt"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_MAX_HEADER = 4096


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One saved checkpoint: its key, its step, and the state saved with it."""

    key: str
    step: int
    state: Any


def _check_key(key: str) -> str:
    # One plain file name: no separators, no "..", no hidden or temporary names
    if not isinstance(key, str) or not _KEY.fullmatch(key) or ".." in key:
        raise ValueError(
            f"invalid checkpoint key {key!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '..'"
        )
    return key


class CheckpointStore:
    """The latest checkpoint of each key, one file per key in ``directory`` (created if needed).

    Safe to use from several threads and processes: readers see the old file or the new
    one; of two concurrent writers of a key, the last ``os.replace`` wins.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.journal = journal

    def path(self, key: str) -> Path:
        """The file of ``key``. Raises ``ValueError`` for a key that is not a plain name."""
        return self.directory / (_check_key(key) + SUFFIX)

    def save(self, key: str, state: Any, step: int) -> Checkpoint:
        """Write ``state`` as the latest checkpoint of ``key``, atomically.

        Raises ``ValueError`` for a bad key, a negative step, or NaN/Inf in the state;
        ``TypeError`` for a state that is not JSON; ``OSError`` if the disk write fails.
        """
        path = self.path(key)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"checkpoint step must be an int >= 0, got {step!r}")
        payload = json.dumps(state, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        data = payload.encode()
        header = {
            "format": FORMAT,
            "version": VERSION,
            "key": key,
            "step": step,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        _write_atomically(path, json.dumps(header).encode() + b"\n" + data)
        if self.journal is not None:
            self.journal.append(CheckpointSaved(time=self.clock.now(), key=key, step=step))
        return Checkpoint(key, step, json.loads(payload))

    def latest(self, key: str) -> Checkpoint | None:
        """The latest checkpoint of ``key``, or None if none was saved.

        Raises :class:`CheckpointError` if the file exists but is unreadable, truncated,
        corrupt, foreign or written for another key.
        """
        path = self.path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(str(path), f"cannot be read: {exc}") from exc
        return _parse(path, key, raw)

    def load(self, key: str) -> Checkpoint:
        """Like :meth:`latest`, but a missing checkpoint is a :class:`CheckpointError` too."""
        found = self.latest(key)
        if found is None:
            raise CheckpointError(str(self.path(key)), "no checkpoint has been saved")
        return found

    def clear(self, key: str) -> bool:
        """Remove the checkpoint of ``key`` and its leftover temporary files; True if one existed.

        Only call it while no process is writing ``key``: a temporary file is removed too.
        """
        path = self.path(key)
        for stale in self.directory.glob(f".{key}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def keys(self) -> list[str]:
        """The keys that have a checkpoint file, sorted."""
        return sorted(
            p.name[: -len(SUFFIX)]
            for p in self.directory.glob(f"*{SUFFIX}")
            if _KEY.fullmatch(p.name[: -len(SUFFIX)])
        )

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.directory)!r})"


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    done = False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        done = True
    finally:
        if not done:  # a failed write leaves no temporary file behind (a kill does: harmless)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    if os.name == "posix":  # make the rename itself durable; Windows cannot open a directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _parse(path: Path, key: str, raw: bytes) -> Checkpoint:
    def bad(problem: str) -> CheckpointError:
        return CheckpointError(str(path), problem)

    end = raw.find(b"\n", 0, _MAX_HEADER)
    if end < 0:
        if not raw:
            raise bad("the file is empty")
        raise bad("no header line: not a checkpoint file, or cut off inside its header")
    try:
        header = json.loads(raw[:end])
    except ValueError:
        raise bad("the header is not JSON: not a checkpoint file") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise bad(f"a foreign file (format {found!r}, expected {FORMAT!r})")
    if header.get("version") != VERSION:
        raise bad(f"unsupported format version {header.get('version')!r} (expected {VERSION})")
    if header.get("key") != key:
        raise bad(f"written for key {header.get('key')!r}, not {key!r}")
    step, size, digest = header.get("step"), header.get("size"), header.get("sha256")
    if not (isinstance(step, int) and isinstance(size, int) and isinstance(digest, str)):
        raise bad("malformed header: step, size and sha256 are required")
    payload = raw[end + 1 :]
    if len(payload) < size:
        raise bad(f"truncated: {len(payload)} of {size} payload bytes")
    if len(payload) > size:
        raise bad(f"{len(payload) - size} unexpected bytes after the payload")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise bad("checksum mismatch: the payload is corrupt")
    try:
        state = json.loads(payload)
    except ValueError:  # only if the writer itself was wrong: the checksum matched
        raise bad("the payload is not JSON") from None
    return Checkpoint(key, step, state)


# --------------------------------------------------------------------------- recovery


class RecoveryContext:
    """What a recoverable function receives: where to resume from, and how to save progress.

    ``checkpoint`` is the checkpoint this attempt resumes from (None: start afresh);
    ``state`` is its state; ``attempt`` counts the runs of the function, from 1. Without a
    store, checkpoints are kept in memory for the duration of the call.
    """

    def __init__(
        self, key: str, store: CheckpointStore | None, clock: Clock, journal: Journal | None
    ) -> None:
        self.key = key
        self.store = store
        self.checkpoint: Checkpoint | None = None
        self.attempt = 0
        self._memory: Checkpoint | None = None
        self._clock = clock
        self._journal = journal

    @property
    def state(self) -> Any:
        """The state to resume from, or None."""
        return self.checkpoint.state if self.checkpoint is not None else None

    def save(self, state: Any, step: int) -> None:
        """Save progress; a later attempt (or a later process, with a store) resumes from it."""
        if self.store is not None:
            self.store.save(self.key, state, step)
            return
        # In memory: a JSON round trip, so a resumed attempt sees what a store would give it
        text = json.dumps(state, allow_nan=False)
        self._memory = Checkpoint(self.key, step, json.loads(text))
        if self._journal is not None:
            self._journal.append(CheckpointSaved(time=self._clock.now(), key=self.key, step=step))

    def latest(self) -> Checkpoint | None:
        return self.store.latest(self.key) if self.store is not None else self._memory

    def clear(self) -> None:
        if self.store is not None:
            self.store.clear(self.key)
        self._memory = None


def execute_with_recovery(
    fn: Callable[[RecoveryContext], T],
    *,
    on: type[Exception] | tuple[type[Exception], ...],
    fallback: Callable[[], T] | None = None,
    checkpoint_key: str | None = None,
    store: CheckpointStore | None = None,
    retry: Callable[[Callable[[], T]], T] | None = None,
    clear: bool = True,
    clock: Clock | None = None,
    journal: Journal | None = None,
) -> T:
    """Run ``fn(recovery)``; on a failure in ``on``, resume from the last checkpoint or fall back.

    - ``fn`` receives a :class:`RecoveryContext`: ``recovery.state`` to resume from (None at first,
      unless a previous process left a checkpoint in ``store``) and ``recovery.save()``.
    - Without ``retry``: when ``fn`` fails with an exception in ``on`` and a checkpoint
      exists, ``fn`` runs once more from it. With ``retry`` (a runner that calls its
      argument with retries, such as a tenacity ``Retrying()`` object), the runner decides,
      and every attempt resumes from the latest checkpoint.
    - When that fails too (an exception in ``on``, or a :class:`RetryError` whose ``last``
      is), ``fallback()`` answers if given; otherwise the failure propagates. Exceptions
      outside ``on`` always propagate at once, and so do ``Cancelled`` and ``HangDetected``
      (``BaseException`` subclasses): no second run, no fallback.
    - ``store`` needs a ``checkpoint_key``; with a key and no store, checkpoints live in
      memory. On success the checkpoint is removed unless ``clear=False``.

    A ``Recovered`` event records how a call recovered: ``"checkpoint"`` (the successful run
    resumed from one), ``"retry"`` (it ran more than once, from scratch) or ``"fallback"``.
    Raises ``ValueError`` for a store without a key.
    """
    if store is not None and checkpoint_key is None:
        raise ValueError("execute_with_recovery: a store needs a checkpoint_key")
    clock = clock if clock is not None else SystemClock()
    key = _check_key(checkpoint_key) if checkpoint_key is not None else _name(fn)
    rec = RecoveryContext(key, store, clock, journal)

    def attempt() -> T:
        rec.attempt += 1
        rec.checkpoint = rec.latest()
        return fn(rec)

    def resume_once(run: Callable[[], T]) -> T:
        try:
            return run()
        except Exception as exc:  # only an Exception: Cancelled and HangDetected go on up
            if not isinstance(exc, on) or rec.latest() is None:
                raise
        return run()  # resumes from the checkpoint the failed run left

    def matches(exc: BaseException) -> bool:
        if isinstance(exc, RetryError) and exc.last is not None and isinstance(exc.last, on):
            return True
        return isinstance(exc, on)

    try:
        result = (retry or resume_once)(attempt)
    except Exception as exc:  # filtered by `on` just below; anything else is re-raised
        if fallback is None or not matches(exc):
            raise
        answer = fallback()
        _recovered(journal, clock, key, "fallback")
        return answer
    if rec.checkpoint is not None:
        _recovered(journal, clock, key, "checkpoint")
    elif rec.attempt > 1:
        _recovered(journal, clock, key, "retry")
    if clear:
        rec.clear()
    return result


def _name(fn: object) -> str:
    name = getattr(fn, "__qualname__", None)  # a function's; else its class's (a callable object)
    return name if isinstance(name, str) else type(fn).__qualname__


def _recovered(journal: Journal | None, clock: Clock, key: str, how: str) -> None:
    if journal is not None:
        journal.append(Recovered(time=clock.now(), key=key, how=how))
