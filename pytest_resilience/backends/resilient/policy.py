"""How the resilient client reads a failure, and what it makes of both sides failing.

A daemon failure is anything the core or a backend raises (a
:class:`~pytest_resilience.core.errors.ResilienceError`): a reason to answer in process.
``Cancelled`` and ``HangDetected`` are no ``ResilienceError`` (nor any ``Exception``), and a
caller's ``TypeError`` is not the core's: none of them is ever a reason to fall back.
"""

from __future__ import annotations

from typing import Literal

from ...core.errors import DaemonUnavailable, FallbackError, ResilienceError, StreamInterrupted

__all__ = ["DOWN", "Policy", "describe", "exhaustion", "falls_back"]

#: ``"raise"``: a ``FallbackError`` when both sides fail; ``"never_fail"``: None instead,
#: and a stream that fails after it started simply ends, with ``error`` set.
Policy = Literal["raise", "never_fail"]

#: What a daemon failure may be: anything the core or a backend raises.
_DAEMON_FAILURES = (ResilienceError,)
#: The failures that mean "the daemon is not answering" (DaemonDown), not "answered badly".
DOWN = (DaemonUnavailable, TimeoutError, StreamInterrupted)


def describe(exc: BaseException) -> str:
    """``exc`` in one line for the journal: its type, and its message if it has one."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def falls_back(exc: Exception) -> bool:
    """Whether ``exc`` is a failure the client answers in process (or ends quietly on,
    under ``"never_fail"``)."""
    return isinstance(exc, _DAEMON_FAILURES)


def exhaustion(
    chain: str, daemon_exc: BaseException, direct_exc: BaseException
) -> tuple[FallbackError, tuple[str, ...]]:
    """Both sides failed: the ``FallbackError`` of ``chain`` (the client's name) that names
    both errors, and the ``failures`` its ``FallbackExhausted`` event journals."""
    failures = (("daemon", daemon_exc), ("direct", direct_exc))
    return FallbackError(chain, failures), tuple(f"{n}: {describe(e)}" for n, e in failures)
