"""The response cache, the cached fallback step and the embedding cache, through the public
API, on a virtual clock."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import TYPE_CHECKING, Any

import pytest

from pytest_resilience import (
    BackendError,
    CachedStep,
    CacheFileWarning,
    EmbeddingCache,
    Fallback,
    FallbackError,
    Journal,
    ResponseCache,
    VirtualClock,
    request_key,
)
from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.core.events import CacheHit, CacheMissed, FallbackUsed
from pytest_resilience.plugin.assertions import assert_fell_back, assert_served_from_cache
from tests.unit.interleave import WAIT, Gate, Worker, arrived, parked, run_together, switching_often

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def cache_of(clock: VirtualClock, journal: Journal | None = None, **kwargs: Any) -> ResponseCache:
    return ResponseCache("answers", clock=clock, journal=journal, **kwargs)


# ---------------------------------------------------------------------------------- keys


def test_a_request_key_is_the_sha256_of_the_canonical_json_of_the_request() -> None:
    params = GenerationParams(max_tokens=8, seed=3)
    expected = json.dumps(
        {
            "model": "tiny",
            "params": {f: getattr(params, f) for f in params.__dataclass_fields__},
            "prompt": "Hi",
            "seed": None,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    assert request_key("Hi", params, model="tiny") == hashlib.sha256(expected.encode()).hexdigest()


def test_equal_requests_share_a_key_and_any_difference_changes_it() -> None:
    base = request_key("Hi", {"temperature": 0.0, "max_tokens": 8}, seed=1, model="m")
    assert base == request_key("Hi", {"max_tokens": 8, "temperature": 0.0}, seed=1, model="m")
    others = [
        request_key("Hi!", {"temperature": 0.0, "max_tokens": 8}, seed=1, model="m"),
        request_key("Hi", {"temperature": 0.5, "max_tokens": 8}, seed=1, model="m"),
        request_key("Hi", {"temperature": 0.0, "max_tokens": 8}, seed=2, model="m"),
        request_key("Hi", {"temperature": 0.0, "max_tokens": 8}, seed=1, model="n"),
    ]
    assert len({base, *others}) == 5
    seeded = {request_key("Hi", GenerationParams(seed=s)) for s in (1, 2)}
    assert len(seeded) == 2


def test_a_request_json_cannot_hold_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cannot hold object"):
        request_key("Hi", {"x": object()})


# ------------------------------------------------------------------------- get and put


def test_a_hit_and_a_miss_are_journaled_with_the_entrys_age() -> None:
    clock, journal = VirtualClock(), Journal()
    cache = cache_of(clock, journal)
    assert cache.put("k", "answer") is True
    clock.sleep(7.0)
    assert cache.get("k") == "answer"
    assert cache.get("other") is None
    hit, missed = journal.events(CacheHit, CacheMissed)
    assert isinstance(hit, CacheHit)
    assert (hit.source, hit.key, hit.age, hit.time) == ("answers", "k", 7.0, 7.0)
    assert isinstance(missed, CacheMissed)
    assert (missed.key, missed.reason) == ("other", "absent")
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.stores, stats.entries) == (1, 1, 1, 1)
    assert_served_from_cache(journal, times=1, source="answers")


def test_assert_served_from_cache_fails_on_the_wrong_count() -> None:
    clock, journal = VirtualClock(), Journal()
    cache = cache_of(clock, journal)
    cache.get("k")
    with pytest.raises(AssertionError, match="expected at least 1 answers served from a cache"):
        assert_served_from_cache(journal)
    cache.put("k", "v")
    cache.get("k")
    with pytest.raises(AssertionError, match=r"expected 2 .* got 1"):
        assert_served_from_cache(journal, times=2)
    with pytest.raises(AssertionError, match="from 'elsewhere', got 0"):
        assert_served_from_cache(journal, times=1, source="elsewhere")


def test_an_entry_expires_at_max_age_on_the_clock() -> None:
    clock, journal = VirtualClock(), Journal()
    cache = cache_of(clock, journal, max_age=60.0)
    cache.put("k", "answer")
    clock.sleep(59.5)
    assert cache.get("k") == "answer"
    clock.sleep(0.5)
    assert cache.get("k") is None
    assert [(e.reason, e.key) for e in journal.events(CacheMissed)] == [("expired", "k")]
    assert "k" not in cache
    assert (cache.stats.expired, cache.stats.bytes) == (1, 0)


def test_a_full_cache_evicts_the_least_recently_used_entry() -> None:
    cache = cache_of(VirtualClock(), max_entries=2)
    cache.put("a", "1")
    cache.put("b", "2")
    assert cache.get("a") == "1"  # a is now the most recently used
    cache.put("c", "3")
    assert ("a" in cache, "b" in cache, "c" in cache) == (True, False, True)
    assert (len(cache), cache.stats.evictions) == (2, 1)


def test_the_byte_bound_evicts_until_the_new_entry_fits() -> None:
    cache = cache_of(VirtualClock(), max_bytes=10)  # key and value, UTF-8 bytes
    cache.put("a", "1234")  # 5 bytes
    cache.put("b", "é12")  # 1 + 4 bytes: 10 in all
    assert cache.stats.bytes == 10
    cache.put("c", "x")  # 2 more bytes: "a" must go
    assert ("a" in cache, "b" in cache, "c" in cache) == (False, True, True)
    assert cache.stats.bytes == 7
    cache.put("b", "z")  # replacing an entry counts its new size only
    assert cache.stats.bytes == 4


def test_a_value_bigger_than_the_byte_bound_is_refused_and_changes_nothing() -> None:
    cache = cache_of(VirtualClock(), max_bytes=10)
    cache.put("k", "old")
    assert cache.put("k", "x" * 10) is False
    assert cache.get("k") == "old"
    assert (cache.stats.refused, cache.stats.stores, cache.stats.bytes) == (1, 1, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_entries": 0}, "max_entries and max_bytes"),
        ({"max_bytes": 0}, "max_entries and max_bytes"),
        ({"max_age": 0.0}, "max_age"),
    ],
)
def test_bad_bounds_are_value_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResponseCache(**kwargs)


# ------------------------------------------------------------------------- persistence


def test_a_saved_cache_loads_in_lru_order_and_keeps_the_entries_ages(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    clock = VirtualClock()
    cache = cache_of(clock, path=path, max_age=100.0, max_entries=2)
    cache.put("a", "1")
    clock.sleep(30.0)
    cache.put("b", "2")
    cache.get("a")  # a becomes the most recently used: b is written first
    clock.sleep(10.0)
    assert cache.save() == path
    assert [row["key"] for row in map(json.loads, path.read_text().splitlines())] == ["b", "a"]
    assert os.listdir(tmp_path) == ["answers.jsonl"]  # no temporary file left behind

    later = VirtualClock(5000.0)  # another process: another clock's readings
    again = cache_of(later, path=path, max_age=100.0, max_entries=2)
    assert len(again) == 2
    again.put("c", "3")  # b, the least recently used, goes first
    assert ("a" in again, "b" in again) == (True, False)
    later.sleep(59.0)  # a is 40 s old when saved: it has 1 s left
    assert again.get("a") == "1"
    later.sleep(1.0)
    assert again.get("a") is None


def test_a_failed_save_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "answers.jsonl"
    cache = cache_of(VirtualClock(), path=path)
    cache.put("a", "1")
    cache.save()
    saved = path.read_bytes()
    cache.put("b", "2" * 1000)

    def no_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_disk)
    with pytest.raises(OSError, match="No space left"):
        cache.save()
    assert path.read_bytes() == saved
    assert os.listdir(tmp_path) == ["answers.jsonl"]


def test_a_corrupt_or_truncated_file_loses_only_its_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    good = [json.dumps({"key": k, "value": v, "age": 1.0}) for k, v in [("a", "1"), ("b", "2")]]
    path.write_bytes(
        (
            good[0] + "\n" + "{not json\n" + '{"key": "x", "value": 3, "age": 0}\n' + good[1] + "\n"
        ).encode()
        + b'{"key": "c", "val'  # the writer of another tool died here
    )
    with pytest.warns(CacheFileWarning) as caught:
        cache = cache_of(VirtualClock(), path=path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3
    assert messages[0].startswith(f"{path}:2: skipped a cache entry that cannot be read: not JSON")
    assert messages[1].startswith(f"{path}:3: ")
    assert '"key" and "value" must be strings' in messages[1]
    assert messages[2].startswith(f"{path}:5: ")
    assert "(the file ends inside it)" in messages[2]
    assert (cache.get("a"), cache.get("b"), len(cache)) == ("1", "2", 2)


def test_saving_without_a_path_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no path"):
        cache_of(VirtualClock()).save()


# ---------------------------------------------------------------------------- threads


class GatedClock:
    """Stands in for the cache's clock: the gate's holder parks in its first ``now()``,
    which the cache reads inside its critical section."""

    def __init__(self, inner: VirtualClock, gate: Gate) -> None:
        self.inner, self.gate = inner, gate

    def now(self) -> float:
        self.gate()
        return self.inner.now()


class BlockedLock:
    """The cache's lock; sets ``came`` when ``who`` finds it taken and has to wait."""

    def __init__(self, who: threading.Thread, came: threading.Event) -> None:
        self.inner, self.who, self.came = threading.Lock(), who, came

    def __enter__(self) -> bool:
        if self.inner.acquire(blocking=False):
            return True
        if threading.current_thread() is self.who:
            self.came.set()
        return self.inner.acquire(timeout=WAIT)

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def in_another_thread(fn: Callable[[], Any], name: str, came: threading.Event) -> Worker[Any]:
    def run() -> Any:
        try:
            return fn()
        finally:
            came.set()  # a cache that lets it through without waiting: nobody waits for it

    return Worker(run, name)


def test_a_store_during_the_expiry_of_the_same_key_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = VirtualClock()
    gate = Gate("in get(), holding an expired entry, before reading the clock")
    cache = cache_of(clock, max_age=10.0)
    cache.put("k", "old")
    clock.sleep(10.0)
    came = threading.Event()
    storer = in_another_thread(lambda: cache.put("k", "new"), "the storer", came)
    monkeypatch.setattr(cache, "clock", GatedClock(clock, gate))
    monkeypatch.setattr(cache, "_lock", BlockedLock(storer, came))
    # The reader finds the old entry and parks before it judges it expired; the storer
    # replaces the entry meanwhile. The reader must drop the old entry only: the new one
    # stays, and the bytes count it once.
    try:
        with parked(gate, lambda: cache.get("k"), "the reader") as reader:
            storer.start()
            arrived(came, "the storer", "at the cache's lock")
        assert reader.result() is None
        assert storer.result() is True
    finally:
        storer.join(WAIT)
    assert cache.get("k") == "new"
    assert cache.stats.bytes == len("k") + len("new")


def test_four_threads_keep_the_bounds_and_the_byte_count() -> None:
    clock = VirtualClock()
    cache = cache_of(clock, max_entries=50, max_bytes=600, max_age=5.0)

    def work(index: int, start: threading.Barrier) -> None:
        start.wait()
        for i in range(3000):
            key = f"{(i * 7 + index) % 120}"
            if i % 3:
                cache.get(key)
            else:
                cache.put(key, "v" * (i % 17))

    with switching_often():
        run_together(work)
    stats = cache.stats
    assert stats.entries <= 50
    assert stats.bytes <= 600
    cache.clear()
    assert cache.stats.bytes == 0
    total = stats.hits + stats.misses
    assert total == 4 * 2000


# ------------------------------------------------------------------- the cached fallback


def chain(cache: ResponseCache, model: Callable[[str], str], journal: Journal) -> Fallback:
    return Fallback(
        "answer",
        [("model", model), CachedStep(cache), ("static", lambda prompt: "resting")],
        on=BackendError,
        journal=journal,
        clock=cache.clock,
    )


def test_the_cached_step_serves_the_last_good_answer_before_the_template() -> None:
    clock, journal = VirtualClock(), Journal()
    cache = cache_of(clock, journal)
    up = [True]

    def model(prompt: str) -> str:
        if not up[0]:
            raise BackendError("model gone")
        return f"{prompt}: {len(journal)}"

    answer = chain(cache, model, journal)
    first = answer("Hi")
    assert answer("Hi") == "Hi: 0"  # the second good answer replaces the first
    assert first == "Hi: 0"
    assert len(cache) == 1
    up[0] = False
    assert answer("Hi") == "Hi: 0"
    used = journal.events(FallbackUsed)[-1]
    assert isinstance(used, FallbackUsed)
    assert (used.step, used.index, used.after) == ("cache", 1, ("model: BackendError: model gone",))
    assert_served_from_cache(journal, times=1)
    assert answer("Hello") == "resting"
    assert_fell_back(journal, to="static", times=1)
    last = journal.events(FallbackUsed)[-1]
    assert isinstance(last, FallbackUsed)
    assert last.after[1] == "cache: CacheMiss: no answer cached for this request in 'answers'"


def test_the_cached_step_keys_by_every_argument_and_the_chains_name() -> None:
    clock = VirtualClock()
    cache = cache_of(clock)
    Fallback("a", [("model", lambda p, n=1: p * n), CachedStep(cache)], on=BackendError)("x", n=2)
    assert request_key(["x"], {"n": 2}, model="a") in cache
    custom = Fallback(
        "b", [("model", str.upper), CachedStep(cache, key=lambda p: p, name="c")], on=BackendError
    )
    assert custom.steps == ("model", "c")
    custom("y")
    assert cache.get("y") == "Y"


def test_the_cached_step_fails_the_chain_when_nothing_is_cached() -> None:
    journal = Journal()
    cache = cache_of(VirtualClock())

    def down(prompt: str) -> str:
        raise BackendError("down")

    answer = Fallback("answer", [("model", down), CachedStep(cache)], on=BackendError)
    with pytest.raises(FallbackError):
        answer("Hi")
    assert journal.events() == []


def test_a_chain_takes_one_cached_step_only() -> None:
    cache = cache_of(VirtualClock())
    with pytest.raises(ValueError, match="more than one CachedStep"):
        Fallback("x", [CachedStep(cache), CachedStep(cache, name="again")], on=BackendError)


def test_the_cached_step_serves_async_chains_too() -> None:
    clock = VirtualClock()
    cache = cache_of(clock)
    calls = [0]

    async def model(prompt: str) -> str:
        calls[0] += 1
        if calls[0] > 1:
            raise BackendError("down")
        return "fresh"

    answer = Fallback("answer", [("model", model), CachedStep(cache)], on=BackendError)
    assert clock.run(answer.acall("Hi")) == "fresh"
    assert clock.run(answer.acall("Hi")) == "fresh"
    assert cache.stats.hits == 1


# ------------------------------------------------------------------ the embedding cache


def test_an_embedding_is_found_by_its_text_or_as_the_nearest_above_the_threshold() -> None:
    clock, journal = VirtualClock(), Journal()
    cache = EmbeddingCache("vectors", threshold=0.9, clock=clock, journal=journal)
    cache.put("cat", [1.0, 0.0, 0.0])
    cache.put("dog", [0.0, 1.0, 0.0])
    assert cache.get("cat") == [1.0, 0.0, 0.0]
    near = cache.lookup("kitten", [0.95, 0.1, 0.0])
    assert near is not None
    assert (near.text, near.exact, near.vector) == ("cat", False, [1.0, 0.0, 0.0])
    assert near.similarity == pytest.approx(0.95 / (0.95**2 + 0.01) ** 0.5)
    assert cache.lookup("between", [1.0, 1.0, 0.0]) is None  # 0.707 < 0.9
    assert cache.lookup("kitten") is None  # no query vector: exact only
    hits, misses = journal.events(CacheHit), journal.events(CacheMissed)
    assert [e.key for e in hits if isinstance(e, CacheHit)] == [
        hashlib.sha256(b"cat").hexdigest()
    ] * 2
    assert len(misses) == 2
    with pytest.raises(ValueError, match="3-D vectors, got 2-D"):
        cache.put("bird", [1.0, 2.0])


def test_the_embedding_cache_keeps_its_bounds_and_expires_entries() -> None:
    clock = VirtualClock()
    cache = EmbeddingCache(max_entries=2, max_bytes=40, max_age=10.0, clock=clock)
    cache.put("a", [1.0, 0.0])
    cache.put("b", [0.0, 1.0])
    cache.get("a")
    cache.put("c", [1.0, 1.0])
    assert ("a" in cache, "b" in cache, "c" in cache) == (True, False, True)
    assert cache.put("x" * 25, [0.0, 0.0]) is False  # 25 + 16 bytes > 40
    assert cache.stats.bytes == 34  # 1 + 16 bytes an entry
    by_bytes = EmbeddingCache(max_entries=10, max_bytes=40, clock=clock)
    for text in "abc":  # the third entry passes 40 bytes: the least recently used goes
        by_bytes.put(text, [1.0, 0.0])
    assert (len(by_bytes), "a" in by_bytes, by_bytes.stats.bytes) == (2, False, 34)
    clock.sleep(10.0)
    assert cache.lookup("a", [1.0, 0.0]) is None
    assert (len(cache), cache.stats.expired, cache.stats.bytes) == (0, 2, 0)


def test_the_embedding_cache_persists_and_skips_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "vectors.jsonl"
    clock = VirtualClock()
    cache = EmbeddingCache(path=path, clock=clock)
    cache.put("a", [0.1, 0.2])
    cache.put("b", [0.3, 0.4])
    cache.save()
    with path.open("a") as file:
        file.write(json.dumps({"text": "c", "vector": [1.0, 2.0, 3.0], "age": 0}) + "\n")
        file.write('{"text": "d", "vector": [1.0')
    with pytest.warns(CacheFileWarning) as caught:
        again = EmbeddingCache(path=path, clock=VirtualClock())
    messages = [str(w.message) for w in caught]
    assert messages[0].startswith(f"{path}:3: ")
    assert "2-D vectors, got 3-D" in messages[0]
    assert messages[1].startswith(f"{path}:4: ")
    assert "(the file ends inside it)" in messages[1]
    assert (again.get("a"), again.get("b"), len(again)) == ([0.1, 0.2], [0.3, 0.4], 2)
