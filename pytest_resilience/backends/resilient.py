"""The resilient client: the daemon first, the same model in process when the daemon fails.

::

    client = ResilientClient(
        DaemonBackend(process.base_url),
        lambda: LlamaBackend(model_path),      # or a backend built ahead of time
        process=process,                       # only needed to restart the daemon
        timeout=10.0, slow_after=2.0, journal=journal,
    )
    text = client.generate(prompt)             # daemon, else in process
    for chunk in client.stream(prompt): ...    # finishes in process if the daemon dies
    stream = await client.astream(prompt)      # the same, async (in process: worker threads)
    monitor = client.watch(interval=5.0, restart=True)   # a health thread; close() stops it

How a call is answered
    A daemon call runs inside ``deadline(timeout)`` (a frozen daemon is given up on when it
    passes), through the ``retry`` (by default only for a daemon that answers badly: 5xx,
    429, malformed output; a daemon that is down is not worth waiting for when the model can
    run here) around the ``breaker`` (by default it opens after 3 consecutive connection
    failures or timeouts and half-opens after 10 s). When the daemon is down
    (:class:`~pytest_resilience.core.errors.DaemonUnavailable`), lost mid-request
    (:class:`~pytest_resilience.core.errors.DaemonLost`), too slow
    (:class:`~pytest_resilience.core.errors.DeadlineExceeded`), rejected by the open breaker
    (:class:`~pytest_resilience.core.errors.CircuitOpenError`), or fails with any other backend
    error, the call is answered by the ``direct`` backend: the same model in process,
    built on first use from a factory, or given ready-made. A cancelled scope
    (:class:`~pytest_resilience.core.errors.Cancelled`) and a hang under a virtual clock
    (:class:`~pytest_resilience.core.errors.HangDetected`) are never a reason to fall back: they
    propagate unchanged from the daemon call (or the in-process one), counted by the breaker
    as neither success nor failure, with no ``DaemonDown`` or ``FallbackUsed`` event. Errors
    that are not the core's (a caller's ``TypeError``) propagate unchanged too.

Streams
    A stream goes through the ``guard`` (a :class:`~pytest_resilience.core.stream.StreamGuard`:
    first-token and idle deadlines, so a daemon frozen mid-answer is detected) and the
    breaker (no retry: delivered text cannot be taken back). When the daemon fails
    mid-stream, the client finishes the answer in process without losing or repeating text:
    generation is deterministic at temperature 0 with a fixed seed, so it *replays* the same
    prompt in process, checks that the replay reproduces what was already delivered, and
    delivers only what comes after it. Replay rather than continuing from prompt+partial,
    because the replayed answer is exactly the in-process answer (same tokenisation, same
    ``max_tokens`` budget, same stop strings), where a continuation would re-tokenise the
    partial text at an arbitrary character boundary and could not know how many tokens are
    left. The price is regenerating the delivered prefix (milliseconds for a small model).
    If the replay does not reproduce the delivered text (sampling with temperature > 0, a
    different model file), nothing can be spliced without contradicting what the consumer
    already holds: the stream raises
    :class:`~pytest_resilience.core.errors.StreamInterrupted` (reason ``"fallback diverged"``,
    ``partial`` = the delivered text), like the stream guard's buffered mode. ``stream()``
    returns once the first chunk has arrived from one side or the other. ``astream()`` does
    the same in async code: the daemon's ``astream`` under the guard's ``awrap``; the
    in-process fallback, which blocks, is iterated one chunk per worker-thread call, and
    ``aclose()`` waits for a call still running before it closes the in-process stream.

Policies
    ``policy="raise"``: when the direct backend fails too,
    :class:`~pytest_resilience.core.errors.FallbackError` is raised (``failures`` names both
    errors), chained from the direct backend's error. ``policy="never_fail"`` (the seeds'
    SteadyText v2.1 behaviour): ``generate``/``embed``/``stream`` return ``None`` instead,
    and a stream that fails after it started simply ends, with ``error`` set. Cancellation
    propagates in both modes: it is the caller's decision, not a failure.

Health
    :meth:`ResilientClient.watch` builds a :class:`~pytest_resilience.core.health.HealthMonitor`
    whose one check pings the daemon (``GET /v1/models``), restarts it through
    ``process.restart()`` when asked to and it does not answer, and uses the ping as the
    breaker's half-open probe, so that a healthy daemon closes the breaker and calls return
    to it. Start it as a thread (real clock) or drive it with ``run_due()`` (virtual clock).

Journal (with a ``journal``): ``DaemonDown(reason)`` when the daemon stops answering
(connection lost or refused, timeout; once per outage), ``DaemonUp(latency)`` when it
answers again, ``DaemonSlow(latency, threshold)`` for a daemon answer (or first chunk)
slower than ``slow_after``, ``FallbackUsed(step="direct", index=1, after=("daemon: why",))``
for every call answered in process, ``FallbackExhausted`` when both failed; plus the
breaker's, the retry's, the guard's and the health monitor's own events.

Threads: the client is safe to share between threads, but a llama-cpp-python backend runs
one generation at a time (a second stream supersedes the first), so concurrent fallbacks
queue on the direct backend. ``close()`` stops the monitors and closes the direct backend
if the client built it; backends and the process given to it stay the caller's.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from typing import TYPE_CHECKING, Literal, Self, TypeVar

from ..core.breaker import CircuitBreaker, ConsecutiveFailures, Recovery, State
from ..core.cancel import CancelScope, deadline
from ..core.clock import Clock, SystemClock
from ..core.errors import (
    BackendError,
    Cancelled,
    CircuitOpenError,
    DaemonUnavailable,
    FallbackError,
    InvalidOutput,
    RateLimited,
    ResilienceError,
    RetryError,
    ServerError,
    StreamInterrupted,
)
from ..core.events import DaemonDown, DaemonSlow, DaemonUp, FallbackUsed, StreamCancelled
from ..core.fallback import FallbackExhausted
from ..core.health import DaemonCheck, HealthMonitor, HealthResult
from ..core.retry import Backoff, Retry
from ..core.stream import StreamGuard
from .base import Backend, GenerationParams

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
    from types import TracebackType

    from ..core.breaker import Permit
    from ..core.events import Event, Journal
    from ..core.stream import AsyncGuardedStream, GuardedStream
    from .daemon import DaemonBackend, DaemonProcess

__all__ = ["AsyncResilientStream", "Policy", "ResilientClient", "ResilientStream"]

T = TypeVar("T")
Policy = Literal["raise", "never_fail"]

#: What a daemon failure may be: anything the core or a backend raises. Cancelled and
#: HangDetected are no ResilienceError (nor any Exception): never a reason to fall back.
_DAEMON_FAILURES = (ResilienceError,)
#: The failures that mean "the daemon is not answering" (DaemonDown), not "answered badly".
_DOWN = (DaemonUnavailable, TimeoutError, StreamInterrupted)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _falls_back(exc: Exception) -> bool:
    return isinstance(exc, _DAEMON_FAILURES)


def _cancelled(inner: GuardedStream | AsyncGuardedStream) -> bool:
    """Whether a guarded stream ended because it was cancelled, though it raised an
    ``Exception`` (the guard's own ``cancel()`` ends it with ``StreamInterrupted``; a scope
    around it, with the ``Cancelled`` itself, which no ``except Exception`` sees)."""
    result = inner.result
    return result is not None and result.reason == "cancelled"


class ResilientClient:
    """The daemon first, the model in process when the daemon fails (see the module docs).

    ``daemon``: the daemon's backend. ``direct``: the in-process backend, or a zero-argument
    factory that builds it on first use (its errors, such as ``ModelNotFound``, count as the
    direct backend failing). ``breaker``, ``retry``, ``guard``: ready-made policies for the
    daemon (defaults described in the module docs; give them the same clock). ``timeout``:
    seconds a daemon call (generate, embed, ping, opening a stream) may take before the
    client answers in process (None: only the daemon backend's own timeouts). ``slow_after``:
    a daemon answer slower than this is journaled as ``DaemonSlow``. ``policy``: ``"raise"``
    or ``"never_fail"``. ``process``: the daemon's process, for ``watch(restart=True)``.

    Raises ``ValueError`` for an unknown policy or a negative timeout.
    """

    def __init__(
        self,
        daemon: DaemonBackend,
        direct: Backend | Callable[[], Backend],
        *,
        breaker: CircuitBreaker | None = None,
        retry: Retry | None = None,
        guard: StreamGuard | None = None,
        timeout: float | None = 60.0,
        slow_after: float | None = None,
        policy: Policy = "raise",
        process: DaemonProcess | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
        name: str = "resilient",
    ) -> None:
        if policy not in ("raise", "never_fail"):
            raise ValueError(f"policy must be 'raise' or 'never_fail', got {policy!r}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds (or None), got {timeout}")
        self.name = name
        self.daemon = daemon
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.journal = journal
        self.timeout = timeout
        self.slow_after = slow_after
        self.policy: Policy = policy
        self.process = process
        self.breaker = breaker or CircuitBreaker(
            f"{name}.daemon",
            on=(*_DOWN, ServerError),  # Cancelled, HangDetected: never counted
            trip=ConsecutiveFailures(3),
            recovery=Recovery(after=10.0),
            clock=self.clock,
            journal=journal,
        )
        self.retry = retry or Retry(
            on=(ServerError, RateLimited, InvalidOutput),
            attempts=2,
            backoff=Backoff(base=0.1, cap=1.0),
            clock=self.clock,
            journal=journal,
            name=f"{name}.daemon",
        )
        self.guard = guard or StreamGuard(
            first_token=timeout, idle=timeout, clock=self.clock, journal=journal, name=name
        )
        if isinstance(direct, Backend):
            self._direct: Backend | None = direct
            self._factory: Callable[[], Backend] | None = None
        else:
            self._direct, self._factory = None, direct
        self._owns_direct = False
        self._lock = threading.Lock()  # the up/down state and building the direct backend
        self._up: bool | None = None  # None: not known yet
        self._monitors: list[HealthMonitor] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"<ResilientClient {self.name!r} daemon={self.daemon.base_url} {self.policy}>"

    # ------------------------------------------------------------------------ the state

    @property
    def daemon_up(self) -> bool | None:
        """Whether the daemon answered last time it was asked (None: not asked yet)."""
        return self._up

    def load_direct(self) -> Backend:
        """The direct backend, built now if it is built lazily. Raises what building raises."""
        backend = self._direct
        if backend is not None:
            return backend
        with self._lock:  # one build, even when several threads fall back at once
            if self._direct is None:
                if self._closed:
                    raise BackendError(f"client {self.name!r} is closed")
                assert self._factory is not None
                self._direct = self._factory()
                self._owns_direct = True
            return self._direct

    def _record(self, event: type[Event], **fields: object) -> None:
        if self.journal is not None:
            self.journal.append(event(time=self.clock.now(), source=self.name, **fields))

    def _swap_up(self, up: bool) -> bool | None:
        """Set the daemon's state; the previous one (under the lock: one event per change)."""
        with self._lock:
            was, self._up = self._up, up
        return was

    def _answered(self, latency: float) -> None:
        """The daemon answered after ``latency`` seconds: DaemonSlow / DaemonUp as due."""
        if self.slow_after is not None and latency > self.slow_after:
            self._record(DaemonSlow, latency=latency, threshold=self.slow_after)
        if self._up is not True and self._swap_up(True) is False:
            self._record(DaemonUp, latency=latency)

    def _failed(self, exc: BaseException) -> None:
        """The daemon did not answer: DaemonDown once per outage, if it is an outage."""
        cause = exc.last if isinstance(exc, RetryError) and exc.last is not None else exc
        if not isinstance(cause, _DOWN) or self._up is False:
            return
        if self._swap_up(False) is not False:
            self._record(DaemonDown, reason=_describe(cause))

    def _fell_back(self, exc: BaseException) -> None:
        self._record(FallbackUsed, step="direct", index=1, after=(f"daemon: {_describe(exc)}",))

    def _exhausted(self, daemon_exc: BaseException, direct_exc: BaseException) -> FallbackError:
        failures = (("daemon", daemon_exc), ("direct", direct_exc))
        self._record(
            FallbackExhausted,
            failures=tuple(f"{n}: {_describe(e)}" for n, e in failures),
        )
        return FallbackError(self.name, failures)

    def _scope(self) -> CancelScope:
        return deadline(self.timeout, clock=self.clock, name=f"{self.name} daemon deadline")

    # ------------------------------------------------------------------------ sync calls

    def _on_daemon(self, fn: Callable[[], T]) -> T:
        """``fn`` on the daemon: deadline, retry, breaker; journals the outcome."""
        start = self.clock.now()
        try:
            with self._scope():
                result = self.retry.call(self.breaker.call, fn)
        except Exception as exc:
            self._failed(exc)
            raise
        self._answered(self.clock.now() - start)
        return result

    def _answer(self, on_daemon: Callable[[], T], in_process: Callable[[Backend], T]) -> T | None:
        """The daemon's answer, else the direct backend's; applies the policy."""
        try:
            return self._on_daemon(on_daemon)
        except Exception as exc:
            if not _falls_back(exc):
                raise
            daemon_exc: Exception = exc
        self._fell_back(daemon_exc)
        try:
            return in_process(self.load_direct())
        except Exception as exc:
            if not _falls_back(exc):
                raise
            error = self._exhausted(daemon_exc, exc)
            if self.policy == "never_fail":
                return None
            raise error from exc

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str | None:
        """The completion of ``prompt``, from the daemon or in process.

        Raises ``FallbackError`` when both fail (``"never_fail"``: returns None instead),
        ``Cancelled`` when the caller's scope is cancelled.
        """
        return self._answer(
            lambda: self.daemon.generate(prompt, params),
            lambda direct: direct.generate(prompt, params),
        )

    def embed(self, text: str) -> list[float] | None:
        """The embedding of ``text``, from the daemon or in process; raises like generate."""
        return self._answer(
            lambda: list(self.daemon.embed(text)),
            lambda direct: list(direct.embed(text)),
        )

    def stream(self, prompt: str, params: GenerationParams | None = None) -> ResilientStream | None:
        """The completion as chunks; returns once the first chunk (or the end) has arrived.

        If the daemon fails before or during the stream, the answer continues in process
        (see the module docs). Raises ``FallbackError`` when both fail before the first
        chunk (``"never_fail"``: returns None), ``StreamInterrupted`` later if the
        in-process replay diverges.
        """
        stream = ResilientStream(self, prompt, params or GenerationParams())
        stream._prime()
        if stream.error is not None and not stream.text and stream._ahead is None:
            return None  # never_fail, and neither side could start the answer
        return stream

    # ----------------------------------------------------------------------- async calls

    async def _aon_daemon(self, fn: Callable[[], Awaitable[T]]) -> T:
        start = self.clock.now()
        try:
            async with self._scope():
                result = await self.retry.acall(self.breaker.acall, fn)
        except Exception as exc:
            self._failed(exc)
            raise
        self._answered(self.clock.now() - start)
        return result

    async def _aanswer(
        self, on_daemon: Callable[[], Awaitable[T]], in_process: Callable[[Backend], T]
    ) -> T | None:
        try:
            return await self._aon_daemon(on_daemon)
        except Exception as exc:
            if not _falls_back(exc):
                raise
            daemon_exc: Exception = exc
        self._fell_back(daemon_exc)
        try:
            # llama.cpp blocks: run it in a worker thread, which sees the caller's cancel
            # scopes (to_thread copies the context) and so stops between tokens on cancel.
            return await asyncio.to_thread(lambda: in_process(self.load_direct()))
        except Exception as exc:
            if not _falls_back(exc):
                raise
            error = self._exhausted(daemon_exc, exc)
            if self.policy == "never_fail":
                return None
            raise error from exc

    async def agenerate(self, prompt: str, params: GenerationParams | None = None) -> str | None:
        """The async :meth:`generate`: the daemon's ``agenerate``, else in process in a
        worker thread. Raises like :meth:`generate`."""
        return await self._aanswer(
            lambda: self.daemon.agenerate(prompt, params),
            lambda direct: direct.generate(prompt, params),
        )

    async def aembed(self, text: str) -> list[float] | None:
        """The async :meth:`embed`."""

        async def on_daemon() -> list[float]:
            return list(await self.daemon.aembed(text))

        return await self._aanswer(on_daemon, lambda direct: list(direct.embed(text)))

    async def astream(
        self, prompt: str, params: GenerationParams | None = None
    ) -> AsyncResilientStream | None:
        """The async :meth:`stream`: the daemon's ``astream``, finished in process (the
        direct backend iterated in worker threads) if the daemon fails. Returns once the
        first chunk (or the end) has arrived; raises like :meth:`stream`.
        """
        stream = AsyncResilientStream(self, prompt, params or GenerationParams())
        await stream._prime()
        if stream.error is not None and not stream.text and stream._ahead is None:
            return None  # never_fail, and neither side could start the answer
        return stream

    # --------------------------------------------------------------------------- health

    def ping(self) -> bool:
        """Ask the daemon for its model list within ``timeout``; True if it answered.

        Used as the breaker's half-open probe when the breaker is half-open, so a healthy
        daemon closes it. Journals DaemonUp / DaemonDown / DaemonSlow like a call. Raises
        what the daemon raised when it does not answer.
        """
        probe = self.breaker.state is State.HALF_OPEN
        start = self.clock.now()
        try:
            with self._scope():
                if probe:
                    try:
                        self.breaker.call(self.daemon.models)
                    except CircuitOpenError:  # another probe is in flight: just ping
                        self.daemon.models()
                else:
                    self.daemon.models()
        except Exception as exc:
            self._failed(exc)
            raise
        self._answered(self.clock.now() - start)
        return True

    def watch(
        self, interval: float = 5.0, *, restart: bool = False, start: bool = True
    ) -> HealthMonitor:
        """A health monitor that pings the daemon every ``interval`` seconds of the clock.

        With ``restart``, a daemon that does not answer is restarted through
        ``process.restart()`` and pinged again. ``start``: run it in a thread now (real
        clock); otherwise drive it with ``run_due()``. ``close()`` stops it. Raises
        ``ValueError`` for ``restart`` without a ``process``.
        """
        if restart and self.process is None:
            raise ValueError("watch(restart=True) needs the client's process=")
        check = _DaemonWatch(self, restart)
        monitor = HealthMonitor([check], interval=interval, clock=self.clock, journal=self.journal)
        self._monitors.append(monitor)
        if start:
            monitor.start()
        return monitor

    # -------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Stop the monitors and close the direct backend if the client built it."""
        self._closed = True
        monitors, self._monitors = self._monitors, []
        for monitor in monitors:
            monitor.stop()
        with self._lock:
            direct, owned = self._direct, self._owns_direct
            if owned:
                self._direct, self._owns_direct = None, False
        if owned and direct is not None:
            direct.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _DaemonWatch:
    """The monitor's check: ping; on failure restart (if asked) and ping again."""

    name = "daemon"

    def __init__(self, client: ResilientClient, restart: bool) -> None:
        self._client = client
        self._restart = restart
        self._check = DaemonCheck(client.ping, client.slow_after, "daemon", client.clock)

    def __call__(self) -> HealthResult:
        result = self._check()
        process = self._client.process
        if result.healthy or not self._restart or process is None:
            return result
        try:
            process.restart()
        except DaemonUnavailable as exc:  # DaemonStartFailed: report it, try again next time
            return HealthResult(
                self.name, False, f"restart failed: {_describe(exc)}", {"restarted": False}
            )
        again = self._check()
        details = {**again.details, "restarted": True}
        return HealthResult(again.name, again.healthy, again.message, details, again.latency)


class ResilientStream:
    """One streamed answer: from the daemon, finished in process if the daemon fails.

    Iterate it for text chunks; ``close()`` (or ``with``) stops it early and closes the
    source. ``text`` is what has been delivered; ``source`` is ``"daemon"`` or
    ``"direct"``; ``fell_back`` says whether the answer switched; ``complete`` is True once
    the answer ran to its end; ``error`` holds what ended it early under ``"never_fail"``.
    """

    def __init__(self, client: ResilientClient, prompt: str, params: GenerationParams) -> None:
        self._client = client
        self._prompt = prompt
        self._params = params
        self._parts: list[str] = []
        self._ahead: str | None = None  # the chunk read by stream() before returning
        self._inner: GuardedStream | None = None
        self._permit: Permit | None = None
        self._daemon_error: BaseException | None = None
        self._replay = ""  # delivered text the in-process replay must reproduce first
        self._matched = 0
        self._started_at = 0.0
        self.source = "daemon"
        self.fell_back = False
        self.complete = False
        self.error: BaseException | None = None
        self._ended = False

    @property
    def text(self) -> str:
        """Everything delivered so far."""
        return "".join(self._parts)

    def __iter__(self) -> Self:
        return self

    # ------------------------------------------------------------------------- sources

    def _daemon_chunks(self) -> Iterator[str]:
        # Opened inside the guard's scope, so the daemon backend's read timeout follows the
        # guard's first-token deadline.
        stream = self._client.daemon.stream(self._prompt, self._params)
        try:
            yield from stream
        finally:
            stream.close()

    def _direct_chunks(self) -> Iterator[str]:
        stream = self._client.load_direct().stream(self._prompt, self._params)
        try:
            yield from stream
        finally:
            stream.close()

    def _open_daemon(self) -> None:
        client = self._client
        self._started_at = client.clock.now()
        try:
            self._permit = client.breaker.acquire()
        except CircuitOpenError as exc:
            self._switch(exc)
            return
        self._inner = client.guard.wrap(self._daemon_chunks())

    def _switch(self, exc: BaseException) -> None:
        """Go on in process, replaying what the daemon delivered (see the module docs)."""
        self._client._failed(exc)
        self._client._fell_back(exc)
        self._daemon_error = exc
        self.source = "direct"
        self.fell_back = True
        self._replay, self._matched = self.text, 0
        self._inner = self._client.guard.wrap(self._direct_chunks())

    def _prime(self) -> None:
        self._open_daemon()
        try:
            self._ahead = self._pull()
        except StopIteration:
            self._ahead = None

    # ------------------------------------------------------------------------ iteration

    def __next__(self) -> str:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            self._parts.append(ahead)
            return ahead
        chunk = self._pull()
        self._parts.append(chunk)
        return chunk

    def _pull(self) -> str:
        """The next new chunk, switching to the direct backend if the daemon fails."""
        while not self._ended:
            inner = self._inner
            assert inner is not None
            try:
                chunk = next(inner)
            except StopIteration:
                result = inner.result
                if result is not None and not result.complete and self.source == "daemon":
                    # a guard with on_stall="return": a stall is still the daemon failing
                    self._daemon_failed(StreamInterrupted(result.reason, result.text))
                    continue
                self._finish()
                raise
            except Exception as exc:
                if _cancelled(inner):  # the caller's decision: never a fallback
                    self.close()
                    raise
                if self.source == "daemon" and _falls_back(exc):
                    self._daemon_failed(exc)
                    continue
                self._fail(exc)
                continue
            except BaseException:  # HangDetected, ^C: no fallback; the guard closed inner
                self.close()  # gives the breaker's permit back, counted as neither
                raise
            if self.source == "daemon":
                if self._permit is not None:
                    self._daemon_answered()
                return chunk
            rest = self._skip_replayed(chunk)
            if rest:
                return rest
        raise StopIteration

    def _daemon_answered(self) -> None:
        """The daemon's first chunk: its latency, and the breaker's outcome so far."""
        permit, self._permit = self._permit, None
        assert permit is not None
        permit.success()
        self._client._answered(self._client.clock.now() - self._started_at)

    def _daemon_failed(self, exc: Exception) -> None:
        permit, self._permit = self._permit, None
        if permit is not None:
            permit.settle(exc)
        else:  # it failed after its first chunk: count it against the breaker too
            try:
                with self._client.breaker.acquire() as late:
                    late.settle(exc)
            except CircuitOpenError:
                pass
        self._switch(exc)

    def _skip_replayed(self, chunk: str) -> str:
        """What ``chunk`` adds after the replayed prefix; raises if the replay diverged."""
        want = len(self._replay) - self._matched
        if want <= 0:
            return chunk
        n = min(want, len(chunk))
        if chunk[:n] != self._replay[self._matched : self._matched + n]:
            self._diverged()
            return ""  # never_fail: the stream has ended
        self._matched += n
        return chunk[n:]

    def _diverged(self) -> None:
        text = self.text
        self._client._record(StreamCancelled, reason="fallback diverged", partial=text)
        self._fail(StreamInterrupted("fallback diverged", text))

    # --------------------------------------------------------------------------- ending

    def _finish(self) -> None:
        if self.source == "direct" and self._matched < len(self._replay):
            self._diverged()  # the replay ended before it reproduced what was delivered
            return
        if self._permit is not None:  # an empty answer from the daemon
            self._daemon_answered()
        self.complete = True
        self._ended = True

    def _fail(self, exc: Exception) -> None:
        """End the stream with ``exc``: raise it (wrapped) or, never_fail, just stop."""
        self._ended = True
        self._close_inner()
        error: Exception = exc
        if self.source == "direct" and _falls_back(exc) and not isinstance(exc, StreamInterrupted):
            assert self._daemon_error is not None
            error = self._client._exhausted(self._daemon_error, exc)
        self.error = error
        if self._client.policy == "raise" or not _falls_back(exc):
            if error is exc:
                raise exc
            raise error from exc

    def _close_inner(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()
        permit, self._permit = self._permit, None
        if permit is not None:
            permit.ignore()  # stopped by the consumer: neither a success nor a failure

    def close(self) -> None:
        """Stop the answer early and close its source. Idempotent."""
        self._ended = True
        self._close_inner()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else ("ended" if self._ended else "open")
        return f"<ResilientStream {self.source} {state} chars={len(self.text)}>"


class AsyncResilientStream:
    """The async :class:`ResilientStream`: ``async for`` over it; ``aclose()`` (or ``async
    with``) stops it early. Same attributes, same switch to the direct backend, which runs in
    worker threads (one ``next()`` per chunk) and is closed, its thread idle, when the stream
    ends however it ends.
    """

    def __init__(self, client: ResilientClient, prompt: str, params: GenerationParams) -> None:
        self._client = client
        self._prompt = prompt
        self._params = params
        self._parts: list[str] = []
        self._ahead: str | None = None  # the chunk read by astream() before returning
        self._inner: AsyncGuardedStream | None = None
        self._permit: Permit | None = None
        self._daemon_error: BaseException | None = None
        self._replay = ""  # delivered text the in-process replay must reproduce first
        self._matched = 0
        self._started_at = 0.0
        self.source = "daemon"
        self.fell_back = False
        self.complete = False
        self.error: BaseException | None = None
        self._ended = False

    @property
    def text(self) -> str:
        """Everything delivered so far."""
        return "".join(self._parts)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        chunk, self._ahead = self._ahead, None
        if chunk is None:
            chunk = await self._pull()
            if chunk is None:
                raise StopAsyncIteration
        self._parts.append(chunk)
        return chunk

    # ------------------------------------------------------------------------- sources

    async def _daemon_chunks(self) -> AsyncIterator[str]:
        # Opened at the first anext, inside the guard's scope (as the sync path does).
        stream = self._client.daemon.astream(self._prompt, self._params)
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()

    def _open_direct(self) -> Iterable[str]:
        return self._client.load_direct().stream(self._prompt, self._params)

    async def _prime(self) -> None:
        client = self._client
        self._started_at = client.clock.now()
        try:
            self._permit = client.breaker.acquire()
        except CircuitOpenError as exc:
            self._switch(exc)
        else:
            self._inner = client.guard.awrap(self._daemon_chunks())
        self._ahead = await self._pull()

    def _switch(self, exc: BaseException) -> None:
        """Go on in process, replaying what the daemon delivered (see the module docs)."""
        client = self._client
        client._failed(exc)
        client._fell_back(exc)
        self._daemon_error = exc
        self.source = "direct"
        self.fell_back = True
        self._replay, self._matched = self.text, 0
        source = _InThread(self._open_direct, client.clock, f"{client.name} direct")
        self._inner = client.guard.awrap(source)

    # ------------------------------------------------------------------------ iteration

    async def _pull(self) -> str | None:
        """The next new chunk (None at the end), switching to in-process if the daemon fails."""
        while not self._ended:
            inner = self._inner
            assert inner is not None
            try:
                chunk = await anext(inner)
            except StopAsyncIteration:
                if self._inner is not inner:  # aclose() from another task while we waited
                    return None
                result = inner.result
                if result is not None and not result.complete and self.source == "daemon":
                    # a guard with on_stall="return": a stall is still the daemon failing
                    self._daemon_failed(StreamInterrupted(result.reason, result.text))
                    continue
                await self._finish()
                return None
            except Exception as exc:
                if self._inner is not inner:  # aclose() from another task while we waited
                    return None
                if _cancelled(inner):
                    await self.aclose()  # the caller's decision: never a fallback
                    raise
                if self.source == "daemon" and _falls_back(exc):
                    self._daemon_failed(exc)
                    continue
                await self._fail(exc)
                continue
            except BaseException:  # the task's cancellation, HangDetected: the guard closed
                self._ended = True  # inner; no fallback, and the permit counts as neither
                self._release_permit()
                raise
            if self.source == "daemon":
                if self._permit is not None:
                    self._daemon_answered()
                return chunk
            rest = await self._skip_replayed(chunk)
            if rest:
                return rest
        return None

    def _daemon_answered(self) -> None:
        """The daemon's first chunk: its latency, and the breaker's outcome so far."""
        permit, self._permit = self._permit, None
        assert permit is not None
        permit.success()
        self._client._answered(self._client.clock.now() - self._started_at)

    def _daemon_failed(self, exc: Exception) -> None:
        permit, self._permit = self._permit, None
        if permit is not None:
            permit.settle(exc)
        else:  # it failed after its first chunk: count it against the breaker too
            try:
                with self._client.breaker.acquire() as late:
                    late.settle(exc)
            except CircuitOpenError:
                pass
        self._switch(exc)

    async def _skip_replayed(self, chunk: str) -> str:
        """What ``chunk`` adds after the replayed prefix; raises if the replay diverged."""
        want = len(self._replay) - self._matched
        if want <= 0:
            return chunk
        n = min(want, len(chunk))
        if chunk[:n] != self._replay[self._matched : self._matched + n]:
            await self._diverged()
            return ""  # never_fail: the stream has ended
        self._matched += n
        return chunk[n:]

    async def _diverged(self) -> None:
        text = self.text
        self._client._record(StreamCancelled, reason="fallback diverged", partial=text)
        await self._fail(StreamInterrupted("fallback diverged", text))

    # --------------------------------------------------------------------------- ending

    async def _finish(self) -> None:
        if self.source == "direct" and self._matched < len(self._replay):
            await self._diverged()  # the replay ended before it reproduced what was delivered
            return
        if self._permit is not None:  # an empty answer from the daemon
            self._daemon_answered()
        self.complete = True
        self._ended = True

    async def _fail(self, exc: Exception) -> None:
        """End the stream with ``exc``: raise it (wrapped) or, never_fail, just stop."""
        self._ended = True
        await self._close_inner()
        error: Exception = exc
        if self.source == "direct" and _falls_back(exc) and not isinstance(exc, StreamInterrupted):
            assert self._daemon_error is not None
            error = self._client._exhausted(self._daemon_error, exc)
        self.error = error
        if self._client.policy == "raise" or not _falls_back(exc):
            if error is exc:
                raise exc
            raise error from exc

    def _release_permit(self) -> None:
        permit, self._permit = self._permit, None
        if permit is not None:
            permit.ignore()  # stopped by the consumer: neither a success nor a failure

    async def _close_inner(self) -> None:
        inner, self._inner = self._inner, None
        try:
            if inner is not None:
                await inner.aclose()
        finally:
            self._release_permit()

    async def aclose(self) -> None:
        """Stop the answer early and close its source (joining an in-process step still
        running in its worker thread). Idempotent."""
        self._ended = True
        await self._close_inner()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "complete" if self.complete else ("ended" if self._ended else "open")
        return f"<AsyncResilientStream {self.source} {state} chars={len(self.text)}>"


class _InThread:
    """A blocking text stream as an async iterator: each ``next()`` runs in a worker thread.

    The stream is opened (``open_()``, which may load a model) in the first step, in the
    context of the code that built this object, inside a scope of our own: a backend that
    captures the current scope when it starts (the llama backend) sees the caller's scopes
    and our stop flag, not the guard's per-chunk deadline scope, which ends after one chunk.
    Each step runs in a copy of the awaiting task's context, so the guard's deadline reaches
    sources that check the current scope, inside a child scope that ``aclose()`` can cancel.

    ``aclose()`` cancels both scopes, waits for a step still running (a cooperative source
    stops at its next check), then closes the stream: no thread is left generating.
    """

    def __init__(self, open_: Callable[[], Iterable[str]], clock: Clock, name: str) -> None:
        self._open = open_
        self._ctx = contextvars.copy_context()
        self._stop = CancelScope(None, clock=clock, name=name)
        self._entered = False  # _stop, entered in _ctx by the first step
        self._it: Iterator[str] | None = None
        self._step_scope: CancelScope | None = None
        self._pending: asyncio.Future[str | None] | None = None
        self._closing = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        if self._closing:
            raise StopAsyncIteration
        pending = self._pending  # a step left running by a cancelled anext: its chunk is next
        if pending is None:
            step = functools.partial(contextvars.copy_context().run, self._step)
            pending = self._pending = asyncio.get_running_loop().run_in_executor(None, step)
        # shield: if this task is cancelled (the guard's deadline), the step runs on and
        # aclose() waits for it rather than leave a thread inside the source
        try:
            chunk = await asyncio.shield(pending)
        except asyncio.CancelledError:
            raise  # this task was cancelled, not the step: its chunk is next
        except Cancelled:
            self._pending = None
            if self._closing:  # aclose() stopped the step: the stream ends, nobody cancelled
                raise StopAsyncIteration from None
            raise
        except BaseException:  # the step failed (HangDetected too): it is over
            self._pending = None
            raise
        self._pending = None
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def _step(self) -> str | None:
        """In a worker thread: the next chunk, or None at the end."""
        with CancelScope(None, name=self._stop.name) as scope:
            self._step_scope = scope
            if self._closing:  # aclose() ran before this step began
                scope.cancel("stream closed")
            if self._it is None:
                if not self._entered:
                    self._ctx.run(self._stop.__enter__)
                    self._entered = True
                self._it = iter(self._ctx.run(self._open))
            return next(self._it, None)

    async def aclose(self) -> None:
        """Stop the source, wait for a step still running, close it. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._stop.cancel("stream closed")
        step = self._step_scope
        if step is not None:
            step.cancel("stream closed")
        pending = self._pending
        if pending is None or pending.done():
            self._close_source(pending)
            return
        # if this wait is cancelled, the source is closed when the step ends
        pending.add_done_callback(self._close_source)
        await asyncio.wait([pending])

    def _close_source(self, pending: asyncio.Future[str | None] | None) -> None:
        if pending is not None and not pending.cancelled():
            pending.exception()  # retrieved: the stream is ending anyway
        it, self._it = self._it, None
        try:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        finally:
            if self._entered:  # even if opening failed: leave the caller's scope tree clean
                self._entered = False
                self._ctx.run(self._stop.__exit__, None, None, None)
