"""The resilient client itself: its calls (sync and async), its health check, its closing.

The package docs say how a call is answered; the streams it returns live in ``streams``
and ``astream``, their decisions in ``splice``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from ...core.breaker import CircuitBreaker, ConsecutiveFailures, HalfOpen, State
from ...core.cache import CacheMiss, request_key
from ...core.cancel import CancelScope, deadline
from ...core.clock import Clock, SystemClock
from ...core.degrade import Level
from ...core.errors import (
    BackendError,
    CircuitOpenError,
    DaemonUnavailable,
    FallbackError,
    InvalidOutput,
    RateLimited,
    RetryError,
    ServerError,
)
from ...core.events import DaemonDown, DaemonSlow, DaemonUp, FallbackUsed
from ...core.fallback import FallbackExhausted
from ...core.health import (
    CpuCheck,
    DaemonCheck,
    DiskCheck,
    HealthMonitor,
    HealthResult,
    MemoryCheck,
    ModelFileCheck,
)
from ...core.retry import Backoff, Retry
from ...core.status import Services
from ...core.stream import StreamGuard
from ...core.trace import span, start_span
from ..base import Backend, GenerationParams
from .astream import AsyncResilientStream
from .policy import DOWN, Policy, describe, exhaustion, falls_back
from .streams import ResilientStream, SplicedStream

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from types import TracebackType

    from ...core.cache import ResponseCache
    from ...core.config import OnAlert, ResiliencePolicy
    from ...core.degrade import Degrader
    from ...core.events import Event
    from ...core.health import HealthCheck
    from ...core.journal import Journal
    from ..daemon import DaemonBackend, DaemonProcess
    from .splice import Switch

__all__ = ["ResilientClient"]

T = TypeVar("T")

#: What a call without a journal runs in instead of a span.
_NO_SPAN = contextlib.nullcontext()


class ResilientClient:
    """The daemon first, the model in process when the daemon fails (see the package docs).

    ``daemon``: the daemon's backend. ``direct``: the in-process backend, or a zero-argument
    factory that builds it on first use (its errors, such as ``ModelNotFound``, count as the
    direct backend failing). ``breaker``, ``retry``, ``guard``: ready-made policies for the
    daemon (defaults described in the package docs; give them the same clock). ``timeout``:
    seconds a daemon call (generate, embed, ping, opening a stream) may take before the
    client answers in process (None: only the daemon backend's own timeouts). ``slow_after``:
    a daemon answer slower than this is journaled as ``DaemonSlow``. ``policy``: ``"raise"``
    or ``"never_fail"``. ``process``: the daemon's process, for ``watch(restart=True)``.
    ``cache``: every generated answer is stored in it (keyed by the prompt, the parameters
    with their seed, and the daemon's model), and when both backends fail, the cached
    answer to the same request is served (``FallbackUsed``, step ``"cache"``); a stream
    that ran to its end, whole and valid, is stored too, and a stream both of whose sides
    fail is served the cached answer as one chunk (midway: only if it begins with the text
    delivered, whose rest it delivers). ``static``:
    the answer served when that fails too (step ``"static"``) instead of raising.
    ``degrader``: consulted at the start of every generation (generate, agenerate, stream,
    astream), and told every outcome (see the package docs, "Degradation"); None (the
    default) costs nothing.

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
        cache: ResponseCache | None = None,
        static: str | None = None,
        degrader: Degrader | None = None,
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
        self.cache = cache
        self.static = static
        self.degrader = degrader
        self.breaker = breaker or CircuitBreaker(
            f"{name}.daemon",
            on=(*DOWN, ServerError),  # Cancelled, HangDetected: never counted
            trip=ConsecutiveFailures(3),
            recovery=HalfOpen(after=10.0),
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

    @classmethod
    def from_policy(
        cls,
        policy: ResiliencePolicy | str | os.PathLike[str],
        daemon: DaemonBackend,
        direct: Backend | Callable[[], Backend],
        *,
        process: DaemonProcess | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
        on_alert: OnAlert | None = None,
    ) -> Self:
        """A client built from a policy file (see ``load_policy``), or from a policy
        already loaded: its ``[retry]``, ``[stream]``, ``[cache]`` and ``[degrade]``, the
        breaker ``[client] breaker`` names (default: ``[breakers.daemon]``, if the file has
        it) and the other ``[client]`` settings; whatever the file does not describe keeps
        the client's own default. A file is loaded on ``clock`` and ``journal``, its
        ``[alerts]`` calling ``on_alert`` (a callable or a list); a loaded policy brings
        its own, so passing any of them too raises ``ValueError``. Raises
        ``PolicyError`` for a file that cannot be used."""
        if isinstance(policy, str | os.PathLike):
            from ...core.config import load_policy  # noqa: PLC0415 - only apps with a file

            policy = load_policy(policy, clock=clock, journal=journal, on_alert=on_alert)
        elif clock is not None or journal is not None or on_alert is not None:
            raise ValueError(
                "a loaded policy brings its own clock and journal, and its alerts' "
                "callbacks: pass them to load_policy()"
            )
        return cls(daemon, direct, process=process, **policy.client_arguments())

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

    def _record(self, event: type[Event], **fields: Any) -> None:
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
        if not isinstance(cause, DOWN) or self._up is False:
            return
        if self._swap_up(False) is not False:
            self._record(DaemonDown, reason=describe(cause))

    def _fell_back(self, exc: BaseException) -> None:
        self._record(FallbackUsed, step="direct", index=1, after=(f"daemon: {describe(exc)}",))

    def _exhausted(self, daemon_exc: BaseException, direct_exc: BaseException) -> FallbackError:
        error, failures = exhaustion(self.name, daemon_exc, direct_exc)
        self._record(FallbackExhausted, failures=failures)
        return error

    def _key(self, prompt: str, params: GenerationParams | None) -> str:
        """The cache key of a generation ("" without a cache). Generations pass one to
        ``_answer``, embeddings none: only text answers are cached or served static."""
        if self.cache is None:
            return ""
        model = self.daemon.model if isinstance(self.daemon.model, str) else ""
        return request_key(prompt, params or GenerationParams(), model=model)

    def _stored(self, key: str | None, answer: T) -> T:
        if key and self.cache is not None and isinstance(answer, str):
            self.cache.put(key, answer)
        return answer

    def _last_resort(
        self, key: str | None, after: tuple[str, ...], delivered: str = ""
    ) -> str | None:
        """The backends failed (``after`` says how): the cached answer, else the static one
        (None: neither). A stream that already ``delivered`` text takes one only if it
        begins with that text, and gets the rest of it."""
        if key and self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None and cached.startswith(delivered):
                self._record(FallbackUsed, step="cache", index=2, after=after)
                return cached[len(delivered) :]
            why = "no answer cached for this request"
            if cached is not None:
                why = "the cached answer does not begin with the text already delivered"
            after = (*after, f"cache: {why}")
        if self.static is not None and self.static.startswith(delivered):
            self._record(FallbackUsed, step="static", index=3, after=after)
            return self.static[len(delivered) :]
        return None

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

    def _answer(
        self,
        on_daemon: Callable[[], T],
        in_process: Callable[[Backend], T],
        key: str | None = None,
    ) -> T | None:
        """The daemon's answer, else the direct backend's, else the cached or static one
        (generations only: ``key``); applies the policy."""
        try:
            return self._stored(key, self._on_daemon(on_daemon))
        except Exception as exc:
            if not falls_back(exc):
                raise
            daemon_exc: Exception = exc
        return self._in_process(daemon_exc, in_process, key)

    def _in_process(
        self, daemon_exc: Exception, in_process: Callable[[Backend], T], key: str | None
    ) -> T | None:
        """The daemon failed with ``daemon_exc``: the direct backend's answer, else the
        cached or static one; applies the policy."""
        self._fell_back(daemon_exc)
        try:
            return self._stored(key, in_process(self.load_direct()))
        except Exception as exc:
            if not falls_back(exc):
                raise
            return cast("T | None", self._both_failed(key, daemon_exc, exc))

    def _both_failed(
        self, key: str | None, daemon_exc: Exception, direct_exc: Exception
    ) -> str | None:
        """The cached or static answer (``key``: text answers only), else the policy."""
        if key is not None:
            after = (f"daemon: {describe(daemon_exc)}", f"direct: {describe(direct_exc)}")
            last = self._last_resort(key, after)
            if last is not None:
                return last
        error = self._exhausted(daemon_exc, direct_exc)
        if self.policy == "never_fail":
            return None
        raise error from direct_exc

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str | None:
        """The completion of ``prompt``, from the daemon or in process.

        Raises ``FallbackError`` when both fail (``"never_fail"``: returns None instead),
        ``Cancelled`` when the caller's scope is cancelled.
        """
        with span(f"{self.name}.generate", self.journal) if self.journal is not None else _NO_SPAN:
            if self.degrader is not None:
                return self._degraded(self.degrader, prompt, params)
            return self._answer(
                lambda: self.daemon.generate(prompt, params),
                lambda direct: direct.generate(prompt, params),
                self._key(prompt, params),
            )

    def embed(self, text: str) -> list[float] | None:
        """The embedding of ``text``, from the daemon or in process; raises like generate."""
        with span(f"{self.name}.embed", self.journal) if self.journal is not None else _NO_SPAN:
            return self._answer(
                lambda: list(self.daemon.embed(text)),
                lambda direct: list(direct.embed(text)),
            )

    def stream(self, prompt: str, params: GenerationParams | None = None) -> ResilientStream | None:
        """The completion as chunks; returns once the first chunk (or the end) has arrived.

        If the daemon fails before or during the stream, the answer continues in process
        (see the package docs). Raises ``FallbackError`` when both fail before the first
        chunk (``"never_fail"``: returns None), ``StreamInterrupted`` later if the
        in-process replay diverges. With a journal, the stream is one span
        (``<name>.stream``) from this call until the stream ends (the ``streams`` module
        says when).
        """
        if self.journal is None:
            return self._stream(prompt, params)
        # the stream's span: current while it is made here, then carried by the stream
        opened = start_span(f"{self.name}.stream", self.journal)
        token = opened.activate()
        try:
            stream = self._stream(prompt, params)
        except BaseException as exc:
            opened.deactivate(token)
            opened.end(exc)
            raise
        opened.deactivate(token)
        if stream is None:
            opened.end()
            return None
        return stream._carry(opened)

    def _stream(self, prompt: str, params: GenerationParams | None) -> ResilientStream | None:
        if self.degrader is not None:
            return self._degraded_stream(self.degrader, prompt, params)
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
        self,
        on_daemon: Callable[[], Awaitable[T]],
        in_process: Callable[[Backend], T],
        key: str | None = None,
    ) -> T | None:
        try:
            return self._stored(key, await self._aon_daemon(on_daemon))
        except Exception as exc:
            if not falls_back(exc):
                raise
            daemon_exc: Exception = exc
        return await self._ain_process(daemon_exc, in_process, key)

    async def _ain_process(
        self, daemon_exc: Exception, in_process: Callable[[Backend], T], key: str | None
    ) -> T | None:
        self._fell_back(daemon_exc)
        try:
            # llama.cpp blocks: run it in a worker thread, which sees the caller's cancel
            # scopes (to_thread copies the context) and so stops between tokens on cancel.
            answer = await asyncio.to_thread(lambda: in_process(self.load_direct()))
        except Exception as exc:
            if not falls_back(exc):
                raise
            return cast("T | None", self._both_failed(key, daemon_exc, exc))
        return self._stored(key, answer)

    async def agenerate(self, prompt: str, params: GenerationParams | None = None) -> str | None:
        """The async :meth:`generate`: the daemon's ``agenerate``, else in process in a
        worker thread. Raises like :meth:`generate`."""
        with span(f"{self.name}.generate", self.journal) if self.journal is not None else _NO_SPAN:
            if self.degrader is not None:
                return await self._adegraded(self.degrader, prompt, params)
            return await self._aanswer(
                lambda: self.daemon.agenerate(prompt, params),
                lambda direct: direct.generate(prompt, params),
                self._key(prompt, params),
            )

    async def aembed(self, text: str) -> list[float] | None:
        """The async :meth:`embed`."""

        async def on_daemon() -> list[float]:
            return list(await self.daemon.aembed(text))

        with span(f"{self.name}.embed", self.journal) if self.journal is not None else _NO_SPAN:
            return await self._aanswer(on_daemon, lambda direct: list(direct.embed(text)))

    async def astream(
        self, prompt: str, params: GenerationParams | None = None
    ) -> AsyncResilientStream | None:
        """The async :meth:`stream`: the daemon's ``astream``, finished in process (the
        direct backend iterated in worker threads) if the daemon fails. Returns once the
        first chunk (or the end) has arrived; raises like :meth:`stream`.
        """
        if self.journal is None:
            return await self._astream(prompt, params)
        opened = start_span(f"{self.name}.stream", self.journal)  # as in stream()
        token = opened.activate()
        try:
            stream = await self._astream(prompt, params)
        except BaseException as exc:
            opened.deactivate(token)
            opened.end(exc)
            raise
        opened.deactivate(token)
        if stream is None:
            opened.end()
            return None
        return stream._carry(opened)

    async def _astream(
        self, prompt: str, params: GenerationParams | None
    ) -> AsyncResilientStream | None:
        if self.degrader is not None:
            return await self._adegraded_stream(self.degrader, prompt, params)
        stream = AsyncResilientStream(self, prompt, params or GenerationParams())
        await stream._prime()
        if stream.error is not None and not stream.text and stream._ahead is None:
            return None  # never_fail, and neither side could start the answer
        return stream

    # ---------------------------------------------------------------------- degradation

    def _degraded(
        self, degrader: Degrader, prompt: str, params: GenerationParams | None
    ) -> str | None:
        """``generate`` at the degrader's level (see the package docs, "Degradation")."""
        level, key = degrader.level, self._key(prompt, params)
        if not level.generates:
            self._probe()
            return self._served(level, key)
        lowered = degrader.adjust(params or GenerationParams())
        start = self.clock.now()
        if level is Level.MINIMAL:
            try:
                answer = self._stored(key, self.load_direct().generate(prompt, lowered))
            except Exception as exc:
                if not falls_back(exc):
                    raise
                degrader.record(False, self.clock.now() - start, error=exc)
                return self._direct_failed(level, key, exc)
            degrader.record(True, self.clock.now() - start)
            return answer
        try:
            answer = self._stored(
                key, self._on_daemon(lambda: self.daemon.generate(prompt, lowered))
            )
        except Exception as exc:
            if not falls_back(exc):
                raise
            daemon_exc: Exception = exc
        else:
            degrader.record(True, self.clock.now() - start)
            return answer
        try:
            return self._in_process(daemon_exc, lambda d: d.generate(prompt, lowered), key)
        finally:
            degrader.record(False, self.clock.now() - start, error=daemon_exc)

    async def _adegraded(
        self, degrader: Degrader, prompt: str, params: GenerationParams | None
    ) -> str | None:
        """The async :meth:`_degraded` (the in-process model and the probe in a thread)."""
        level, key = degrader.level, self._key(prompt, params)
        if not level.generates:
            await asyncio.to_thread(self._probe)
            return self._served(level, key)
        lowered = degrader.adjust(params or GenerationParams())
        start = self.clock.now()
        if level is Level.MINIMAL:
            try:
                answer = await asyncio.to_thread(
                    lambda: self.load_direct().generate(prompt, lowered)
                )
            except Exception as exc:
                if not falls_back(exc):
                    raise
                degrader.record(False, self.clock.now() - start, error=exc)
                return self._direct_failed(level, key, exc)
            degrader.record(True, self.clock.now() - start)
            return self._stored(key, answer)
        try:
            answer = self._stored(
                key, await self._aon_daemon(lambda: self.daemon.agenerate(prompt, lowered))
            )
        except Exception as exc:
            if not falls_back(exc):
                raise
            daemon_exc: Exception = exc
        else:
            degrader.record(True, self.clock.now() - start)
            return answer
        try:
            return await self._ain_process(daemon_exc, lambda d: d.generate(prompt, lowered), key)
        finally:
            degrader.record(False, self.clock.now() - start, error=daemon_exc)

    def _probe(self) -> None:
        """At a level that does not generate: ping the daemon (its outcome is recorded by
        :meth:`ping`), unless the breaker is open (it says when to try again)."""
        if self.breaker.state is State.OPEN:
            return
        try:
            self.ping()
        except Exception:  # noqa: BLE001 - a probe's failure is news for the degrader only
            return

    def _served(self, level: Level, key: str) -> str | None:
        """The answer of a level that does not generate: the cached one (``CACHED_ONLY``),
        else the static one; else ``FallbackError`` (``"never_fail"``: None)."""
        skipped = f"skipped at degradation level {level.label}"
        after = (f"daemon: {skipped}", f"direct: {skipped}")
        if level is Level.CACHED_ONLY:
            last = self._last_resort(key, after)
        else:
            last = self._last_resort("", after)
        if last is not None:
            return last
        reason = "no answer cached for this request" if self.cache is not None else "no cache"
        if level is not Level.CACHED_ONLY:
            reason = "no static answer"
        return self._nothing_served(
            level, CacheMiss(f"{reason} at degradation level {level.label}")
        )

    def _direct_failed(self, level: Level, key: str, exc: Exception) -> str | None:
        """The in-process model failed at ``MINIMAL``: the cached or static answer, else
        ``FallbackError`` (``"never_fail"``: None)."""
        after = (f"daemon: skipped at degradation level {level.label}", f"direct: {describe(exc)}")
        last = self._last_resort(key, after)
        if last is not None:
            return last
        return self._nothing_served(level, exc)

    def _nothing_served(self, level: Level, exc: BaseException) -> str | None:
        """Nothing could be served: ``FallbackError`` (``"never_fail"``: None)."""
        source = "direct" if level is Level.MINIMAL else level.label
        error = FallbackError(self.name, ((source, exc),))
        self._record(FallbackExhausted, failures=(f"{source}: {describe(exc)}",))
        if self.policy == "never_fail":
            return None
        raise error from exc

    def _degraded_stream(
        self, degrader: Degrader, prompt: str, params: GenerationParams | None
    ) -> ResilientStream | None:
        """``stream`` at the degrader's level; the outcome is the start of the answer."""
        level = degrader.level
        if not level.generates:
            self._probe()
            text = self._served(level, self._key(prompt, params))
            if text is None:
                return None
            served = _ServedStream(self, prompt, params or GenerationParams())
            served._serve(text, level)
            return served
        lowered = degrader.adjust(params or GenerationParams())
        stream = (_DirectStream if level is Level.MINIMAL else ResilientStream)(
            self, prompt, lowered, key=self._key(prompt, params)
        )
        start = self.clock.now()
        try:
            stream._prime()
        except Exception as exc:
            degrader.record(False, self.clock.now() - start, error=exc)
            raise
        self._stream_outcome(degrader, level, stream, start)
        if stream.error is not None and not stream.text and stream._ahead is None:
            return None
        return stream

    async def _adegraded_stream(
        self, degrader: Degrader, prompt: str, params: GenerationParams | None
    ) -> AsyncResilientStream | None:
        """The async :meth:`_degraded_stream`."""
        level = degrader.level
        if not level.generates:
            await asyncio.to_thread(self._probe)
            text = self._served(level, self._key(prompt, params))
            if text is None:
                return None
            served = _AsyncServedStream(self, prompt, params or GenerationParams())
            served._serve(text, level)
            return served
        lowered = degrader.adjust(params or GenerationParams())
        stream = (_AsyncDirectStream if level is Level.MINIMAL else AsyncResilientStream)(
            self, prompt, lowered, key=self._key(prompt, params)
        )
        start = self.clock.now()
        try:
            await stream._prime()
        except Exception as exc:
            degrader.record(False, self.clock.now() - start, error=exc)
            raise
        self._stream_outcome(degrader, level, stream, start)
        if stream.error is not None and not stream.text and stream._ahead is None:
            return None
        return stream

    def _stream_outcome(
        self, degrader: Degrader, level: Level, stream: SplicedStream, start: float
    ) -> None:
        """A primed stream's outcome: failed if its preferred source did not start it."""
        splice = stream._splice
        failed = splice.error is not None or splice.served_after is not None
        failed = failed or (level is not Level.MINIMAL and splice.fell_back)
        error = splice.daemon_error if level is not Level.MINIMAL else splice.error
        error = error or splice.served_after
        degrader.record(not failed, self.clock.now() - start, error=error if failed else None)

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
            self._health(False, start, exc)
            raise
        self._answered(self.clock.now() - start)
        self._health(True, start)
        return True

    def _health(self, up: bool, start: float, exc: Exception | None = None) -> None:
        """A ping's outcome is the degrader's only news at the levels that do not generate."""
        degrader = self.degrader
        if degrader is not None and not degrader.level.generates:
            degrader.record(up, self.clock.now() - start, error=exc)

    def status(
        self,
        *,
        ping: bool = False,
        resources: Iterable[HealthCheck] | None = None,
        window: float = 300.0,
    ) -> dict[str, object]:
        """The client's health as a plain dict, ready for ``json.dumps``
        (:meth:`pytest_resilience.core.status.Services.status`): ``healthy``, ``degraded``
        or ``unhealthy``, with reasons.

        Services: ``daemon`` (its breaker, and whether it answered last time; with
        ``ping``, it is asked now), not critical since the client answers in process
        without it; ``direct`` (the in-process model's file, once the backend is built and
        has one), critical; ``resources`` (``resources``, default memory, disk and CPU
        load: :class:`~pytest_resilience.core.health.MemoryCheck`, ``DiskCheck``,
        ``CpuCheck``), not critical; ``degradation`` (with a ``degrader``: unhealthy below
        the full level, so the client reads ``degraded`` while it gives something up), not
        critical. The figures come from the client's journal, over the last ``window``
        seconds of its clock.
        """
        services = Services(clock=self.clock, journal=self.journal, window=window)
        if ping:
            daemon: HealthCheck = DaemonCheck(self.ping, self.slow_after, "daemon", self.clock)
        else:
            daemon = DaemonCheck(lambda: self._up is not False, None, "daemon", self.clock)
        services.register("daemon", breaker=self.breaker, checks=[daemon], critical=False)
        path = getattr(self._direct, "model_path", None)
        model = [ModelFileCheck(path, clock=self.clock)] if isinstance(path, str) else []
        services.register("direct", checks=model)
        if resources is None:
            resources = [
                MemoryCheck(clock=self.clock),
                DiskCheck(clock=self.clock),
                CpuCheck(clock=self.clock),
            ]
        services.register("resources", checks=resources, critical=False)
        if self.degrader is not None:
            services.register("degradation", checks=[_LevelCheck(self.degrader)], critical=False)
        return services.status()

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


class _LevelCheck:
    """The degrader's level as a health check: healthy at the full level only."""

    name = "level"

    def __init__(self, degrader: Degrader) -> None:
        self._degrader = degrader

    def __call__(self) -> HealthResult:
        level = self._degrader.level
        healthy = level is Level.FULL
        message = level.label
        return HealthResult(self.name, healthy, message, {"level": level.label})


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
                self.name, False, f"restart failed: {describe(exc)}", {"restarted": False}
            )
        again = self._check()
        details = {**again.details, "restarted": True}
        return HealthResult(again.name, again.healthy, again.message, details, again.latency)


class _DirectStream(ResilientStream):
    """A stream at ``MINIMAL``: in process from the start (the daemon is skipped)."""

    def _admit(self) -> Switch | None:
        self._started_at = self._client.clock.now()
        return self._splice.on_refused(_skipped(Level.MINIMAL))


class _AsyncDirectStream(AsyncResilientStream):
    """The async :class:`_DirectStream`."""

    def _admit(self) -> Switch | None:
        self._started_at = self._client.clock.now()
        return self._splice.on_refused(_skipped(Level.MINIMAL))


def _skipped(level: Level) -> BackendError:
    return BackendError(f"skipped at degradation level {level.label}")


class _ServedStream(ResilientStream):
    """A stream at a level that does not generate: the cached or static answer, whole."""

    def _serve(self, text: str, level: Level) -> None:
        self._ahead = text or None
        splice = self._splice
        splice.ended = splice.complete = True

    def _pull(self) -> str:
        raise StopIteration


class _AsyncServedStream(AsyncResilientStream):
    """The async :class:`_ServedStream`."""

    def _serve(self, text: str, level: Level) -> None:
        self._ahead = text or None
        splice = self._splice
        splice.ended = splice.complete = True

    async def _pull(self) -> str | None:
        return None
