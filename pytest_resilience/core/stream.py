"""The streaming guard: first-token, idle and total deadlines on any stream of text chunks.

::

    guard = StreamGuard(first_token=10.0, idle=5.0, total=120.0, clock=clock, journal=journal)
    with guard.wrap(backend.stream(prompt)) as chunks:
        for chunk in chunks:            # StreamStalled if a deadline passes; .partial kept
            show(chunk)
    result = guard.collect(backend.stream(prompt))   # or the whole text as a StreamResult

Deadlines, all on the guard's clock and measured from the first ``next()`` (or ``start()``):

- ``first_token``: the first chunk must arrive within this many seconds;
- ``idle``: every later chunk within this many seconds of the one before;
- ``total``: the whole stream within this many seconds.

How a stream is stopped. The source is iterated in the caller's thread inside a
:class:`~pytest_resilience.core.cancel.CancelScope` whose deadline moves after every chunk (the
first-token deadline before the first chunk, then the earlier of the idle and the total
deadline, and never later than a scope around the guard). Sources that cooperate stop at
exactly the deadline: the llama backend checks the scope between tokens, the daemon backend
derives its read timeout from it, an injected stall waits in ``current_scope().wait()``. A
chunk from a source that does not cooperate, arriving after the deadline, is not delivered:
the stall is reported when it arrives. ``wrap(source, threaded=True)`` is for sources that can
block forever: a worker thread pulls the chunks (at most 64 ahead), so the guard can give up
at the deadline; the worker is then told to stop, a non-generator source is closed from the
consumer's thread (so its ``close()`` must be thread-safe, as a ``TextStream``'s is), and a
worker still blocked is reported (``stream.abandoned``, ``stream.join()``), never silently
left: its thread is named ``pytest-resilience-stream:<name>`` for the leak check.

How a stream ends (``stream.result``, a :class:`StreamResult`):

- ``complete``: the source ran out;
- ``first_token`` / ``idle`` / ``total``: a deadline passed. Raises
  :class:`~pytest_resilience.core.errors.StreamStalled` (``which``, ``waited``, ``partial``), or
  with ``on_stall="return"`` ends the iteration normally and leaves the result incomplete;
- ``cancelled``: the stream's own ``cancel()`` was called: raises
  :class:`~pytest_resilience.core.errors.StreamInterrupted` (``reason``, ``partial``), from the
  :class:`~pytest_resilience.core.errors.Cancelled` if the source raised one. A scope around the
  guard was cancelled (or the source raised ``Cancelled`` of its own): the ``Cancelled``
  propagates unchanged, a ``BaseException`` that no retry, breaker or fallback above may take
  for a failure; the partial text is ``stream.text``. The end records that scope's reason
  (``"cancelled: <reason>"``), in async code too, where the scope cancels the task while the
  source waits; only a task cancelled from outside records ``"task cancelled"``, and its
  ``asyncio.CancelledError`` propagates unchanged too;
- ``error``: the source raised. The exception propagates unchanged (retry policies, breakers
  and the classifier need its real type); the partial text is ``stream.text``. A deadline
  around the guard that passes before the stream's own ends it the same way, sync and
  async alike: its ``DeadlineExceeded`` propagates unchanged and is recorded as the error
  (``"error: DeadlineExceeded: request of 2s exceeded"``). A
  :class:`~pytest_resilience.core.errors.HangDetected` (a source waiting on a virtual clock for
  what never comes, in the consumer's thread or in the worker of ``threaded=True``) ends the
  stream the same way: the source is closed, the end recorded, and the hang goes on up
  unchanged, never turned into a stall or an end of the stream;
- ``closed``: the consumer stopped early (``close()``, leaving ``with``, ``break``);
- ``empty``: the source ran out, but what it delivered is empty or whitespace only: not an
  answer, so not complete (``detail`` ``"no text"`` or ``"whitespace only"``). The
  iteration ends normally;
- ``invalid``: a validator rejected a chunk. ``validators=`` are callables that take each
  chunk's text, in order, and return false (or raise ``ValueError``, whose message goes
  into ``detail``) to reject it. The rejected chunk is not delivered, the iteration ends
  normally, and the text is what came before it. Any other exception from a validator
  ends the stream as ``error`` and propagates;
- ``capped``: the next chunk would take the stream past ``max_chunks`` chunks or
  ``max_chars`` characters: it is not delivered (the text is whole chunks, never past the
  cap), the iteration ends normally and ``detail`` names the cap (``"max_chars=4096"``).
  A source that ends exactly at the cap is complete.

Whatever the end, the source's ``close()`` (``aclose()``) runs, once. Journal events:
``StreamFirstToken(latency)``; ``StreamStalled(which, waited, partial)``;
``StreamCancelled(reason, partial)`` for cancellation, errors and early exits (reason
``"cancelled: ..."``, ``"error: Type: message"`` or ``"closed"``); ``StreamEmpty(partial)``,
``StreamInvalid(chunk, detail, partial)`` and ``StreamCapped(limit, partial)`` for the three
ends that are not complete though nothing failed. Early exit is recorded by
``close()`` and ``with``; a stream merely dropped after ``break`` is closed by the garbage
collector without an event (a finaliser must not take locks).

Buffered generation on out-of-memory. With ``buffered=`` (a callable returning the whole
completion), a ``MemoryError`` (``ResourceExhausted`` is one) from the source closes it and
calls ``buffered()`` once, inside the total deadline (past it, the stream ends as a ``total``
stall, like any other). The consumer already holds the partial
text, so the stream yields only what the buffered answer adds after it: if the answer starts
with the partial text (deterministic decoding), the rest of it; if it does not, nothing can be
spliced without duplicating or contradicting what was delivered, and
:class:`~pytest_resilience.core.errors.StreamInterrupted` is raised (reason
``"buffered answer diverged"``). A second ``MemoryError`` propagates. A ``FallbackUsed``
event (step ``"buffered"``) records the switch.

Cost: a chunk costs one clock read, a cancellation check and a few assignments, well under
a microsecond on top of the source (see ``tests/unit/test_stream.py``); validators and caps,
when given, add a call per validator and a comparison per cap.

The guard (:class:`StreamGuard`) is here; the streams it makes are in
:mod:`pytest_resilience.core.stream_sync` (:class:`GuardedStream`, and the worker thread of
``threaded=True``) and :mod:`pytest_resilience.core.stream_async`
(:class:`AsyncGuardedStream`), on the bookkeeping they share
(:mod:`pytest_resilience.core.stream_base`); all are importable from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .clock import Clock, SystemClock
from .stream_async import AsyncGuardedStream
from .stream_base import OnStall, StreamResult, Validator
from .stream_sync import GuardedStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable, Iterable

    from .journal import Journal

__all__ = ["AsyncGuardedStream", "GuardedStream", "StreamGuard", "StreamResult", "Validator"]


class StreamGuard:
    """Deadlines and reporting for streams; ``wrap()`` / ``awrap()`` apply them to one stream.

    ``first_token``, ``idle`` and ``total`` are seconds, or None for no such deadline.
    ``on_stall="return"`` ends a stalled stream normally instead of raising.
    ``validators`` check each chunk (see the module docs, ``invalid``); ``max_chunks`` and
    ``max_chars`` cap a stream (``capped``). Raises ``ValueError`` for a negative deadline,
    an unknown ``on_stall`` or a cap below 1.
    """

    def __init__(
        self,
        *,
        first_token: float | None = None,
        idle: float | None = None,
        total: float | None = None,
        on_stall: OnStall = "raise",
        clock: Clock | None = None,
        journal: Journal | None = None,
        name: str = "stream",
        validators: Iterable[Validator] = (),
        max_chunks: int | None = None,
        max_chars: int | None = None,
    ) -> None:
        for what, value in (("first_token", first_token), ("idle", idle), ("total", total)):
            if value is not None and value < 0:
                raise ValueError(f"StreamGuard {what} must be >= 0 seconds, got {value}")
        for what, cap in (("max_chunks", max_chunks), ("max_chars", max_chars)):
            if cap is not None and cap < 1:
                raise ValueError(f"StreamGuard {what} must be at least 1, got {cap}")
        if on_stall not in ("raise", "return"):
            raise ValueError(f"on_stall must be 'raise' or 'return', got {on_stall!r}")
        self.first_token = first_token
        self.idle = idle
        self.total = total
        self.on_stall: OnStall = on_stall
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.journal = journal
        self.name = name
        self.validators: tuple[Validator, ...] = tuple(validators)
        self.max_chunks = max_chunks
        self.max_chars = max_chars

    def wrap(
        self,
        source: Iterable[str],
        *,
        buffered: Callable[[], str] | None = None,
        threaded: bool = False,
    ) -> GuardedStream:
        """Guard ``source`` (any iterable of str; closed through its ``close()`` if it has one)."""
        return GuardedStream(self, source, buffered=buffered, threaded=threaded)

    def awrap(
        self,
        source: AsyncIterable[str],
        *,
        buffered: Callable[[], Awaitable[str]] | None = None,
    ) -> AsyncGuardedStream:
        """Guard an async iterable of str (closed through its ``aclose()`` if it has one)."""
        return AsyncGuardedStream(self, source, buffered=buffered)

    def collect(
        self,
        source: Iterable[str],
        *,
        buffered: Callable[[], str] | None = None,
        threaded: bool = False,
    ) -> StreamResult:
        """Read the whole guarded stream. Raises as iterating ``wrap(source)`` does."""
        with self.wrap(source, buffered=buffered, threaded=threaded) as stream:
            for _ in stream:
                pass
        assert stream.result is not None  # the loop ended, so the stream did
        return stream.result

    async def acollect(
        self,
        source: AsyncIterable[str],
        *,
        buffered: Callable[[], Awaitable[str]] | None = None,
    ) -> StreamResult:
        """Read the whole guarded async stream. Raises as iterating ``awrap(source)`` does."""
        async with self.awrap(source, buffered=buffered) as stream:
            async for _ in stream:
                pass
        assert stream.result is not None
        return stream.result

    def __repr__(self) -> str:
        return (
            f"StreamGuard(first_token={self.first_token}, idle={self.idle}, "
            f"total={self.total}, on_stall={self.on_stall!r})"
        )
