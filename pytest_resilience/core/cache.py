"""A response cache: the last good answer to each request, for when nothing else answers.

::

    cache = ResponseCache(max_entries=512, max_bytes=4 * 2**20, max_age=3600.0,
                          path="answers.jsonl", clock=clock, journal=journal)
    key = request_key(prompt, params, model="gemma-270m")  # prompt, parameters, seed, model
    cache.put(key, answer)
    cache.get(key)             # the answer, or None (absent, or older than max_age)
    cache.save()               # the whole cache to ``path``, atomically

Keys: :func:`request_key` hashes a canonical JSON of the request (sorted keys, no
whitespace; dataclasses as their fields, tuples as lists), so the same request gives the
same key in every process. Values are text.

Bounds: at most ``max_entries`` entries and ``max_bytes`` bytes (each entry counts its
key's and its value's UTF-8 bytes); storing past either evicts the least recently used
entries (a hit counts as a use). A value that alone passes ``max_bytes`` is refused:
``put`` returns False and the cache is left as it was. ``max_age`` (seconds on the
injected clock, None: no limit) makes older entries misses; an expired entry is dropped
when it is found.

Journal: every ``get`` records a :class:`~pytest_resilience.core.events.CacheHit` or a
:class:`~pytest_resilience.core.events.CacheMissed` (``reason`` "absent" or "expired").
Stores and evictions are counted in :attr:`ResponseCache.stats`, not journaled. The
journal is appended to outside the cache's lock.

Threads: one lock guards the entries and the counters; nothing slow runs under it (no
I/O, no journal).

Persistence (``path``): the file is JSON lines, one entry a line, least recently used
first: ``{"key": ..., "value": ..., "age": ...}``. Ages are kept, not clock readings (a
monotonic clock means nothing to another process): an entry loaded from the file is as old
as it was when saved. :meth:`ResponseCache.save` writes a temporary file in the same
folder, fsyncs it and renames it over ``path``, so a crash leaves the old file or the new
one, never half of one. Loading (at construction, when ``path`` exists) skips a line that
is not a valid entry (corrupt, or cut short by a crash of a writer of its own) with a
:class:`CacheFileWarning` naming the file and the line, and keeps every other line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from .clock import Clock, SystemClock
from .events import CacheHit, CacheMissed, event_maker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .journal import Journal

T = TypeVar("T")

__all__ = [
    "BoundedCache",
    "CacheFileWarning",
    "CacheMiss",
    "CacheStats",
    "ResponseCache",
    "read_entries",
    "request_key",
    "skipped_line",
    "write_atomically",
]

_hit = event_maker(CacheHit)
_missed = event_maker(CacheMissed)


class CacheFileWarning(UserWarning):
    """A line of a cache file could not be read; the line is skipped, the rest loaded."""


class CacheMiss(LookupError):
    """No answer is cached for the request (raised by the cached fallback step)."""


def _plain(value: object) -> object:
    """JSON's view of a value the encoder does not know: a dataclass as its fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"a request key cannot hold {type(value).__name__} values: {value!r}")


def canonical_json(value: object) -> str:
    """``value`` as canonical JSON: sorted keys, no whitespace, dataclasses as their fields.

    Raises ``TypeError`` for a value JSON cannot hold, ``ValueError`` for NaN or infinity.
    """
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_plain,
    )


def request_key(
    prompt: object, params: object = None, *, seed: int | None = None, model: str = ""
) -> str:
    """The cache key of a request: a SHA-256 of the canonical JSON of its prompt, its
    parameters (a mapping or a dataclass such as ``GenerationParams``), its seed and its
    model. Equal requests give equal keys in every process; raises ``TypeError`` for a part
    JSON cannot hold."""
    text = canonical_json({"prompt": prompt, "params": params, "seed": seed, "model": model})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What a cache holds and has done since it was made (loading counts as stores)."""

    entries: int
    bytes: int
    hits: int
    misses: int
    stores: int
    evictions: int
    expired: int
    refused: int


V = TypeVar("V")


class _Entry(Generic[V]):
    __slots__ = ("size", "stored", "value")

    def __init__(self, value: V, size: int, stored: float) -> None:
        self.value, self.size, self.stored = value, size, stored


def _size(key: str, value: str) -> int:
    return len(key.encode("utf-8")) + len(value.encode("utf-8"))


class BoundedCache(Generic[V]):
    """What every bounded cache shares: entries of type ``V`` by text key in LRU order,
    their byte count and counters under one lock, the bounds, expiry on the injected
    clock, :attr:`stats`, and saving to ``path``. A cache built on it says what its keys
    and values are, how they are looked up and which events they make.

    Raises ``ValueError`` for a bound below 1 or a ``max_age`` that is not positive.
    """

    def __init__(
        self,
        name: str,
        *,
        max_entries: int,
        max_bytes: int,
        max_age: float | None,
        path: str | os.PathLike[str] | None,
        clock: Clock | None,
        journal: Journal | None,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(
                f"max_entries and max_bytes must be >= 1, got {max_entries}, {max_bytes}"
            )
        if max_age is not None and not max_age > 0:
            raise ValueError(f"max_age must be > 0 seconds (or None), got {max_age}")
        self.name = name
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.path = Path(path) if path is not None else None
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.journal = journal
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # one save at a time: the newest snapshot wins
        self._bytes = 0
        self._hits = self._misses = self._stores = 0
        self._evictions = self._expired = self._refused = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {len(self)}/{self.max_entries} entries>"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has an entry, expired or not (no event, no use)."""
        return key in self._entries

    @property
    def stats(self) -> CacheStats:
        """The entries, bytes and counters, read together."""
        with self._lock:
            return CacheStats(
                entries=len(self._entries),
                bytes=self._bytes,
                hits=self._hits,
                misses=self._misses,
                stores=self._stores,
                evictions=self._evictions,
                expired=self._expired,
                refused=self._refused,
            )

    # ------------------------------------------------------------- under the lock

    def _is_expired(self, entry: _Entry[V], now: float) -> bool:
        return self.max_age is not None and now - entry.stored >= self.max_age

    def _admits(self, size: int) -> bool:
        """Whether an entry of ``size`` bytes fits at all (counting it refused if not)."""
        if size > self.max_bytes:
            self._refused += 1
            return False
        return True

    def _insert(self, key: str, value: V, size: int, stored: float) -> None:
        """Store one entry as the newest, then evict the least recently used past the
        bounds."""
        self._drop(key)
        self._entries[key] = _Entry(value, size, stored)
        self._bytes += size
        self._stores += 1
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
            self._evictions += 1

    def _drop(self, key: str) -> _Entry[V] | None:
        """Forget ``key``'s entry, if any, and return it."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size
        return entry

    def _expire(self, key: str) -> None:
        """Forget ``key``'s entry because it expired."""
        self._drop(key)
        self._expired += 1

    def _loaded(
        self, parse: Callable[[bytes], tuple[str, T, float]]
    ) -> Iterator[tuple[int, str, T, float]]:
        """The unexpired entries of the file at ``path`` (read by ``parse`` as key,
        value and age), each with its line number and the clock reading it was stored
        at."""
        if self.path is None:
            return
        now = self.clock.now()
        for number, (key, value, age) in read_entries(self.path, parse):
            if self.max_age is None or age < self.max_age:
                yield number, key, value, now - age

    # --------------------------------------------------------------------- saving

    def _save(self, row: Callable[[str, V, float], dict[str, object]]) -> Path:
        """Write every unexpired entry, as ``row(key, value, age)``, to ``path``
        atomically; return the path."""
        if self.path is None:
            raise ValueError(f"cache {self.name!r} has no path to save to")
        with self._save_lock:
            with self._lock:
                now = self.clock.now()
                rows = [
                    row(key, entry.value, now - entry.stored)
                    for key, entry in self._entries.items()
                    if not self._is_expired(entry, now)
                ]
            lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
            write_atomically(self.path, "".join(lines).encode("utf-8"))
        return self.path


class ResponseCache(BoundedCache[str]):
    """A bounded, thread-safe LRU cache of answers by request key (see the module docs).

    Raises ``ValueError`` for a bound below 1 or a ``max_age`` that is not positive.
    """

    def __init__(
        self,
        name: str = "cache",
        *,
        max_entries: int = 1024,
        max_bytes: int = 16 * 2**20,
        max_age: float | None = None,
        path: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(
            name,
            max_entries=max_entries,
            max_bytes=max_bytes,
            max_age=max_age,
            path=path,
            clock=clock,
            journal=journal,
        )
        with self._lock:
            for _, key, value, stored in self._loaded(_entry_of):
                self._store(key, value, _size(key, value), stored)

    # ----------------------------------------------------------------------- the entries

    def get(self, key: str) -> str | None:
        """The answer stored under ``key``, or None if there is none or it expired."""
        with self._lock:
            entry = self._entries.get(key)
            now = self.clock.now()
            if entry is None:
                self._misses += 1
                reason, age = "absent", 0.0
            elif self._is_expired(entry, now):
                self._expire(key)
                self._misses += 1
                reason, age = "expired", now - entry.stored
            else:
                self._entries.move_to_end(key)
                self._hits += 1
                reason, age = "", now - entry.stored
        if self.journal is not None:
            if reason:
                self.journal.append(_missed(time=now, source=self.name, key=key, reason=reason))
            else:
                self.journal.append(_hit(time=now, source=self.name, key=key, age=age))
        return None if entry is None or reason else entry.value

    def put(self, key: str, value: str) -> bool:
        """Store ``value`` under ``key`` as its newest entry, evicting the least recently
        used entries past the bounds. Returns False (and changes nothing) for a value that
        alone passes ``max_bytes``; raises ``TypeError`` for a key or value not text."""
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"a cache stores text under text keys, not {type(value).__name__}")
        size = _size(key, value)
        with self._lock:
            return self._store(key, value, size, self.clock.now())

    def _store(self, key: str, value: str, size: int, stored: float) -> bool:
        """Under the lock: store one entry stored at ``stored``, then keep the bounds."""
        if not self._admits(size):
            return False
        self._insert(key, value, size, stored)
        return True

    def discard(self, key: str) -> bool:
        """Forget ``key``; whether it was there."""
        with self._lock:
            return self._drop(key) is not None

    def clear(self) -> None:
        """Forget every entry (the counters stay)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    # ----------------------------------------------------------------------- persistence

    def save(self) -> Path:
        """Write every unexpired entry to ``path`` atomically; return the path.

        Raises ``ValueError`` if the cache has no ``path``, ``OSError`` if writing fails
        (the old file is then left as it was).
        """
        return self._save(lambda key, value, age: {"key": key, "value": value, "age": age})


def read_entries(path: Path, parse: Callable[[bytes], T]) -> Iterator[tuple[int, T]]:
    """The entries of a JSON-lines file with their line numbers, each line read by
    ``parse``; nothing if the file does not exist. A line ``parse`` refuses
    (``ValueError``) is skipped with a :class:`CacheFileWarning` (:func:`skipped_line`),
    and the next one is read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    lines = data.split(b"\n")
    cut_short = len(lines) if lines[-1] else 0  # the last line, if it lacks its newline
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            entry = parse(raw)
        except ValueError as exc:
            cut = " (the file ends inside it)" if number == cut_short else ""
            skipped_line(path, number, f"{exc}{cut}")
            continue
        yield number, entry


def skipped_line(path: Path, number: int, why: str) -> None:
    """Warn that line ``number`` of the cache file ``path`` was skipped, and why."""
    warnings.warn(
        f"{path}:{number}: skipped a cache entry that cannot be read: {why}",
        CacheFileWarning,
        stacklevel=2,
    )


def _entry_of(raw: bytes) -> tuple[str, str, float]:
    """One line of a cache file as (key, value, age); ``ValueError`` says what is wrong."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"not an object but {type(row).__name__}")
    key, value, age = row.get("key"), row.get("value"), row.get("age")
    if not isinstance(key, str) or not isinstance(value, str):
        raise ValueError('"key" and "value" must be strings')
    if isinstance(age, bool) or not isinstance(age, int | float) or not math.isfinite(age):
        raise ValueError('"age" must be a number')
    if age < 0:
        raise ValueError(f'"age" must be >= 0, got {age}')
    return key, value, float(age)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temporary file in the same folder, fsynced, then
    renamed over it (and the folder fsynced, so that the rename survives a crash)."""
    folder = path.parent
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # not every platform opens folders
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
