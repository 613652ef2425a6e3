"""The resilient client with a response cache: the real tiny model in process, a daemon
that is not there (a closed port), and a direct backend that cannot be built."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import pytest

from pytest_resilience import (
    Degrader,
    FallbackError,
    ModelNotFound,
    ResponseCache,
    StreamGuard,
    VirtualClock,
)
from pytest_resilience.backends.base import Backend, GenerationParams
from pytest_resilience.backends.daemon import DaemonBackend
from pytest_resilience.backends.resilient import ResilientClient
from pytest_resilience.core.degrade import Level
from pytest_resilience.core.events import FallbackUsed
from pytest_resilience.plugin.assertions import assert_fell_back, assert_served_from_cache

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pytest_resilience.backends.llama import LlamaBackend
    from pytest_resilience.core.journal import Journal

SHORT = GenerationParams(max_tokens=12)


@pytest.fixture
def nowhere() -> Iterator[DaemonBackend]:
    """A daemon backend whose port nobody listens on: every call is DaemonUnavailable."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = DaemonBackend(f"http://127.0.0.1:{port}")
    yield backend
    backend.close()


def no_model() -> Backend:
    raise ModelNotFound("the model file is gone")


def test_the_last_good_answer_is_served_when_both_backends_fail(
    nowhere: DaemonBackend, llama_backend: LlamaBackend, journal: Journal
) -> None:
    clock = VirtualClock()
    cache = ResponseCache(clock=clock, journal=journal)
    with ResilientClient(nowhere, llama_backend, cache=cache, clock=clock, journal=journal) as up:
        answer = up.generate("Hello", SHORT)
    assert answer == llama_backend.generate("Hello", SHORT)
    assert len(cache) == 1

    with ResilientClient(
        nowhere, no_model, cache=cache, static="resting", clock=clock, journal=journal
    ) as down:
        assert down.generate("Hello", SHORT) == answer
        used = journal.events(FallbackUsed)[-1]
        assert isinstance(used, FallbackUsed)
        assert used.step == "cache"
        assert used.after[1].startswith("direct: ModelNotFound")
        assert_served_from_cache(journal, times=1)
        # another request (other parameters) has no cached answer: the static one
        assert down.generate("Hello", GenerationParams(max_tokens=13)) == "resting"
        assert_fell_back(journal, to="static", times=1)
        with pytest.raises(FallbackError):  # embeddings are neither cached nor static
            down.embed("Hello")
    bare = ResilientClient(nowhere, no_model, cache=cache, clock=clock, journal=journal)
    with bare, pytest.raises(FallbackError):  # no static answer: nothing left to serve
        bare.generate("Unseen", SHORT)


def test_the_async_client_serves_the_cached_answer_too(
    nowhere: DaemonBackend, llama_backend: LlamaBackend, journal: Journal
) -> None:
    clock = VirtualClock()
    cache = ResponseCache(clock=clock, journal=journal)
    with ResilientClient(nowhere, llama_backend, cache=cache, clock=clock) as up:
        answer = clock.run(up.agenerate("Hi", SHORT))
    with ResilientClient(nowhere, no_model, cache=cache, clock=clock, journal=journal) as down:
        assert clock.run(down.agenerate("Hi", SHORT)) == answer
    assert_fell_back(journal, to="cache", times=1)


# -------------------------------------------------------------------------- streams


def test_a_whole_stream_is_cached_and_served_as_one_chunk_when_both_backends_fail(
    nowhere: DaemonBackend, llama_backend: LlamaBackend, journal: Journal
) -> None:
    clock = VirtualClock()
    cache = ResponseCache(clock=clock, journal=journal)
    with ResilientClient(nowhere, llama_backend, cache=cache, clock=clock) as up:
        stream = up.stream("Hello", SHORT)
        assert stream is not None
        parts = list(stream)
    answer = "".join(parts)
    assert len(parts) > 1
    assert answer == llama_backend.generate("Hello", SHORT)
    assert len(cache) == 1

    with ResilientClient(nowhere, no_model, cache=cache, clock=clock, journal=journal) as down:
        served = down.stream("Hello", SHORT)
        assert served is not None
        assert list(served) == [answer]  # the cached answer, whole
        assert (served.complete, served.error, served.text) == (True, None, answer)
        assert_served_from_cache(journal, times=1)
        assert_fell_back(journal, to="cache", times=1)
        assert down.generate("Hello", SHORT) == answer  # one request, one key
        with pytest.raises(FallbackError):  # nothing cached for another request
            down.stream("Unseen", SHORT)


def test_the_async_stream_caches_and_serves_the_same_way(
    nowhere: DaemonBackend, llama_backend: LlamaBackend, journal: Journal
) -> None:
    clock = VirtualClock()
    cache = ResponseCache(clock=clock, journal=journal)

    async def read(client: ResilientClient) -> list[str]:
        stream = await client.astream("Hi", SHORT)
        assert stream is not None
        return [chunk async for chunk in stream]

    with ResilientClient(nowhere, llama_backend, cache=cache, clock=clock) as up:
        answer = "".join(clock.run(read(up)))
    assert answer == llama_backend.generate("Hi", SHORT)
    with ResilientClient(nowhere, no_model, cache=cache, clock=clock, journal=journal) as down:
        assert clock.run(read(down)) == [answer]
    assert_served_from_cache(journal, times=1)
    assert_fell_back(journal, to="cache", times=1)


def test_a_stream_served_at_cached_only_comes_from_a_cached_stream(
    nowhere: DaemonBackend, llama_backend: LlamaBackend, journal: Journal
) -> None:
    clock = VirtualClock()
    cache = ResponseCache(clock=clock, journal=journal)
    degrader = Degrader(lowest=Level.CACHED_ONLY, clock=clock, journal=journal)
    with ResilientClient(
        nowhere, llama_backend, cache=cache, degrader=degrader, clock=clock, journal=journal
    ) as client:
        stream = client.stream("Hello", SHORT)
        assert stream is not None
        answer = "".join(stream)
        assert len(cache) == 1
        degrader.force(Level.CACHED_ONLY)
        served = client.stream("Hello", SHORT)
        assert served is not None
        assert list(served) == [answer]
    assert_served_from_cache(journal, times=1)
    assert_fell_back(journal, to="cache", times=1)


@pytest.mark.parametrize(
    ("guard", "why"),
    [
        ({"max_chars": 5}, "capped"),
        ({"validators": [lambda chunk: "!" not in chunk and len(chunk) < 1000]}, "valid"),
        ({"validators": [lambda chunk: False]}, "invalid"),
    ],
    ids=["capped", "valid", "invalid"],
)
def test_only_a_whole_valid_stream_is_stored(
    nowhere: DaemonBackend,
    llama_backend: LlamaBackend,
    journal: Journal,
    guard: dict[str, object],
    why: str,
) -> None:
    clock = VirtualClock()
    cache = ResponseCache(clock=clock, journal=journal)
    with ResilientClient(
        nowhere,
        llama_backend,
        cache=cache,
        guard=StreamGuard(clock=clock, **guard),  # type: ignore[arg-type]
        clock=clock,
    ) as client:
        stream = client.stream("Hello", SHORT)
        assert stream is not None
        list(stream)
    assert len(cache) == (1 if why == "valid" else 0)


def test_a_stream_stopped_early_is_not_stored(
    nowhere: DaemonBackend, llama_backend: LlamaBackend, journal: Journal
) -> None:
    clock = VirtualClock()
    cache = ResponseCache(clock=clock, journal=journal)
    with ResilientClient(nowhere, llama_backend, cache=cache, clock=clock) as client:
        stream = client.stream("Hello", SHORT)
        assert stream is not None
        with stream:
            assert next(stream)  # the consumer stops after one chunk
        assert not stream.complete
    assert len(cache) == 0
