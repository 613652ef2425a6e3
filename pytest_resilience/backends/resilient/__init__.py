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
    errors), chained from the direct backend's error. ``policy="never_fail"`` (for apps that
    want ``None`` rather than an exception): ``generate``/``embed``/``stream`` return ``None``
    instead, and a stream that fails after it started simply ends, with ``error`` set. Cancellation
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
breaker's, the retry's, the guard's and the health monitor's own events. With a journal,
each call is a span (``<name>.generate``, ``.embed``, ``.stream``;
:mod:`pytest_resilience.core.trace`) around the retry's, the guard's and the fallback's: a
stream's span covers it until its first chunk, the guard's (``stream:<name>``) to its end.

Threads: the client is safe to share between threads, but a llama-cpp-python backend runs
one generation at a time (a second stream supersedes the first), so concurrent fallbacks
queue on the direct backend. ``close()`` stops the monitors and closes the direct backend
if the client built it; backends and the process given to it stay the caller's.

Modules: ``client`` (:class:`ResilientClient`: its calls, health check and closing),
``splice`` (the decisions of one stream: told what happened, it answers what to do next),
``streams`` (the sync stream, and the bookkeeping both streams do on the splice's answers),
``astream`` (the async stream), ``inthread`` (a blocking stream iterated in worker
threads), ``policy`` (how a failure is read, and both sides failing).
"""

from __future__ import annotations

from .astream import AsyncResilientStream
from .client import ResilientClient
from .policy import Policy
from .streams import ResilientStream

__all__ = ["AsyncResilientStream", "Policy", "ResilientClient", "ResilientStream"]
