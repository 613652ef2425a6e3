"""An embedding cache: vectors by text, and the nearest cached vector when a text is new.

::

    cache = EmbeddingCache(threshold=0.95, max_entries=4096, path="vectors.jsonl",
                           clock=clock, journal=journal)
    cache.put("the cat sat", vector)
    cache.get("the cat sat")                   # the vector stored for exactly this text
    match = cache.lookup("a cat sat", query)   # exact by text, else the nearest to query
    if match is not None:
        match.text, match.vector, match.similarity

``lookup(text, query)`` answers with the entry stored for ``text`` (similarity 1.0), else,
given a ``query`` vector (from a cheaper embedder, say), the cached entry whose vector is
nearest to it by cosine similarity, if that similarity is at least ``threshold``. Vectors
are numpy float64 arrays inside, lists of floats outside; every vector of a cache has the
dimension of the first one stored.

The rules are those of :class:`~pytest_resilience.core.cache.ResponseCache`: at most
``max_entries`` entries and ``max_bytes`` bytes (the text's UTF-8 bytes and 8 bytes a
component), the least recently used evicted first, an entry too big for ``max_bytes``
refused; ``max_age`` on the injected clock; a ``CacheHit`` or ``CacheMissed`` event per
lookup (``key``: the SHA-256 of the text found, or asked for); thread-safe under one lock;
JSON lines persistence (``{"text": ..., "vector": [...], "age": ...}``) written
atomically, loaded skipping unreadable lines with a ``CacheFileWarning`` naming the file
and the line.

numpy is imported when the first cache is made, never when this module is imported.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.cache import BoundedCache, skipped_line
from ..core.events import CacheHit, CacheMissed, event_maker

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence
    from pathlib import Path

    import numpy as np
    import numpy.typing as npt

    from ..core.clock import Clock
    from ..core.journal import Journal

    Vector = npt.NDArray[np.float64]

__all__ = ["EmbeddingCache", "EmbeddingMatch"]

_hit = event_maker(CacheHit)
_missed = event_maker(CacheMissed)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class EmbeddingMatch:
    """A cached entry that answered a lookup: exact (``similarity`` 1.0) or the nearest."""

    text: str
    vector: list[float]
    similarity: float
    exact: bool


class _Vectors:
    __slots__ = ("unit", "vector")

    def __init__(self, vector: Vector, unit: Vector) -> None:
        self.vector, self.unit = vector, unit


class EmbeddingCache(BoundedCache[_Vectors]):
    """A bounded, thread-safe LRU cache of embeddings by text (see the module docs).

    Raises ``ValueError`` for a bound below 1, a ``max_age`` that is not positive or a
    ``threshold`` outside [-1, 1].
    """

    def __init__(
        self,
        name: str = "embeddings",
        *,
        threshold: float = 0.95,
        max_entries: int = 4096,
        max_bytes: int = 64 * 2**20,
        max_age: float | None = None,
        path: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
    ) -> None:
        import numpy  # noqa: PLC0415  (lazily: importing the package stays cheap)

        super().__init__(
            name,
            max_entries=max_entries,
            max_bytes=max_bytes,
            max_age=max_age,
            path=path,
            clock=clock,
            journal=journal,
        )
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
        self._np = numpy
        self.threshold = threshold
        self.dimension: int | None = None
        if self.path is not None:
            with self._lock:
                for number, text, vector, stored in self._loaded(_entry_of):
                    try:
                        self._store(text, self._array(vector), stored)
                    except ValueError as exc:  # another dimension, a number out of range
                        skipped_line(self.path, number, str(exc))

    # ------------------------------------------------------------------------- storing

    def _array(self, vector: Sequence[float] | Vector) -> Vector:
        array = self._np.array(vector, dtype=self._np.float64)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"an embedding is a non-empty 1-D vector, got shape {array.shape}")
        if not self._np.all(self._np.isfinite(array)):
            raise ValueError("an embedding must hold finite numbers only")
        return array

    def put(self, text: str, vector: Sequence[float] | Vector) -> bool:
        """Store ``vector`` for ``text`` as the newest entry, evicting past the bounds.

        Returns False (and changes nothing) for an entry that alone passes ``max_bytes``.
        Raises ``ValueError`` for a vector that is not 1-D and finite, or not of the
        cache's dimension.
        """
        array = self._array(vector)
        with self._lock:
            return self._store(text, array, self.clock.now())

    def _store(self, text: str, array: Vector, stored: float) -> bool:
        if self.dimension is not None and array.size != self.dimension:
            raise ValueError(f"this cache holds {self.dimension}-D vectors, got {array.size}-D")
        size = len(text.encode("utf-8")) + array.nbytes
        if not self._admits(size):
            return False
        self.dimension = array.size
        norm = float(self._np.linalg.norm(array))
        unit = array / norm if norm > 0 else array
        self._insert(text, _Vectors(array, unit), size, stored)
        return True

    # ------------------------------------------------------------------------ looking up

    def get(self, text: str) -> list[float] | None:
        """The vector stored for exactly ``text``, or None."""
        match = self.lookup(text)
        return match.vector if match is not None else None

    def lookup(
        self, text: str, query: Sequence[float] | Vector | None = None
    ) -> EmbeddingMatch | None:
        """The entry for ``text``, else the one nearest to ``query`` (cosine similarity at
        least ``threshold``), else None. Expired entries are dropped as they are met."""
        unit = None
        if query is not None:
            array = self._array(query)
            norm = float(self._np.linalg.norm(array))
            unit = array / norm if norm > 0 else array
        with self._lock:
            now = self.clock.now()
            self._drop_expired(now)
            found = self._exact(text) if text in self._entries else self._nearest(unit)
            if found is None:
                self._misses += 1
            else:
                self._hits += 1
                self._entries.move_to_end(found.text)
                age = now - self._entries[found.text].stored
        if self.journal is not None:
            if found is None:
                self.journal.append(
                    _missed(time=now, source=self.name, key=_key(text), reason="absent")
                )
            else:
                self.journal.append(_hit(time=now, source=self.name, key=_key(found.text), age=age))
        return found

    def _exact(self, text: str) -> EmbeddingMatch:
        return EmbeddingMatch(text, self._entries[text].value.vector.tolist(), 1.0, True)

    def _nearest(self, unit: Vector | None) -> EmbeddingMatch | None:
        if unit is None or not self._entries or unit.size != self.dimension:
            return None
        texts = list(self._entries)
        matrix = self._np.stack([self._entries[t].value.unit for t in texts])
        similarities = matrix @ unit
        best = int(self._np.argmax(similarities))
        similarity = float(similarities[best])
        if similarity < self.threshold:
            return None
        entry = self._entries[texts[best]].value
        return EmbeddingMatch(texts[best], entry.vector.tolist(), similarity, False)

    def _drop_expired(self, now: float) -> None:
        if self.max_age is None:
            return
        for text in [t for t, e in self._entries.items() if self._is_expired(e, now)]:
            self._expire(text)

    # ----------------------------------------------------------------------- persistence

    def save(self) -> Path:
        """Write every unexpired entry to ``path`` atomically; return the path.

        Raises ``ValueError`` without a ``path``, ``OSError`` if writing fails (the old
        file is then left as it was).
        """
        return self._save(
            lambda text, value, age: {"text": text, "vector": value.vector.tolist(), "age": age}
        )


def _entry_of(raw: bytes) -> tuple[str, list[float], float]:
    """One line of an embedding cache file; ``ValueError`` says what is wrong with it."""
    try:
        row: Any = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"not an object but {type(row).__name__}")
    text, vector, age = row.get("text"), row.get("vector"), row.get("age")
    if not isinstance(text, str):
        raise ValueError('"text" must be a string')
    if (
        not isinstance(vector, list)
        or not vector
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector)
    ):
        raise ValueError('"vector" must be a non-empty list of numbers')
    if isinstance(age, bool) or not isinstance(age, int | float) or not math.isfinite(age):
        raise ValueError('"age" must be a number')
    if age < 0:
        raise ValueError(f'"age" must be >= 0, got {age}')
    return text, [float(x) for x in vector], float(age)
