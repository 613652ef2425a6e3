"""pytest-resilience: a resilience core for local-LLM applications, and the tools to test it.

The names here are the core, safe to use in production code: importing them pulls in
neither pytest nor llama-cpp-python nor httpx. The model backends live in
``pytest_resilience.backends``, the event records in ``pytest_resilience.events``, the
fault injector in the separate ``faults`` package, and the pytest plugin registers itself.

Every name is imported on first use (PEP 562): pytest imports this package in every run of
every user who installs the plugin, and most runs need none of the core.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .analytics import Summary, summarize
    from .app import fallback_point, fell_back, retried
    from .breaker import (
        BreakerStats,
        CircuitBreaker,
        ConsecutiveFailures,
        CountWindow,
        Permit,
        Recovery,
        State,
        TimeWindow,
        TripPolicy,
    )
    from .cancel import CancelScope, cancel_scope, check_cancelled, current_scope, deadline
    from .clock import Clock, SystemClock, VirtualClock
    from .degrade import DegradePolicy, Degrader, Level, Limits, Profile
    from .errors import (
        Action,
        BackendError,
        Cancelled,
        Category,
        CheckpointError,
        CircuitOpenError,
        Classification,
        Classifier,
        DaemonLost,
        DaemonUnavailable,
        DeadlineExceeded,
        FallbackError,
        HangDetected,
        InvalidOutput,
        ModelNotFound,
        RateLimited,
        ResilienceError,
        ResilienceInterrupt,
        ResourceExhausted,
        RetryError,
        Rule,
        ServerError,
        Severity,
        StreamInterrupted,
        StreamStalled,
        classify,
    )
    from .events import Event, Journal, JournalFull, JsonLinesLogger
    from .fallback import Fallback, Step
    from .health import (
        DaemonCheck,
        DiskCheck,
        HealthCheck,
        HealthMonitor,
        HealthResult,
        MemoryCheck,
        ModelFileCheck,
    )
    from .recovery import Checkpoint, CheckpointStore, RecoveryContext, execute_with_recovery
    from .retry import (
        Backoff,
        ExceptionFilter,
        Jitter,
        Retry,
        RetryDetails,
        is_retryable,
        result_is_empty,
        result_is_none,
    )
    from .stream import GuardedStream, StreamGuard, StreamResult

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "fallback_point": "app",
    "fell_back": "app",
    "retried": "app",
    "Action": "errors",
    "BackendError": "errors",
    "Backoff": "retry",
    "BreakerStats": "breaker",
    "CancelScope": "cancel",
    "Cancelled": "errors",
    "Category": "errors",
    "Checkpoint": "recovery",
    "CheckpointError": "errors",
    "CheckpointStore": "recovery",
    "CircuitBreaker": "breaker",
    "CircuitOpenError": "errors",
    "Classification": "errors",
    "Classifier": "errors",
    "Clock": "clock",
    "ConsecutiveFailures": "breaker",
    "CountWindow": "breaker",
    "DaemonCheck": "health",
    "DaemonLost": "errors",
    "DaemonUnavailable": "errors",
    "DeadlineExceeded": "errors",
    "DegradePolicy": "degrade",
    "Degrader": "degrade",
    "DiskCheck": "health",
    "Event": "events",
    "ExceptionFilter": "errors",
    "Fallback": "fallback",
    "FallbackError": "errors",
    "GuardedStream": "stream",
    "HangDetected": "errors",
    "ResilienceInterrupt": "errors",
    "HealthCheck": "health",
    "HealthMonitor": "health",
    "HealthResult": "health",
    "InvalidOutput": "errors",
    "Jitter": "retry",
    "Journal": "events",
    "JournalFull": "events",
    "JsonLinesLogger": "events",
    "Level": "degrade",
    "Limits": "degrade",
    "MemoryCheck": "health",
    "ModelFileCheck": "health",
    "ModelNotFound": "errors",
    "Permit": "breaker",
    "Profile": "degrade",
    "RateLimited": "errors",
    "Recovery": "breaker",
    "RecoveryContext": "recovery",
    "ResilienceError": "errors",
    "ResourceExhausted": "errors",
    "Retry": "retry",
    "RetryDetails": "retry",
    "RetryError": "errors",
    "Rule": "errors",
    "ServerError": "errors",
    "Severity": "errors",
    "State": "breaker",
    "Step": "fallback",
    "StreamGuard": "stream",
    "StreamInterrupted": "errors",
    "StreamResult": "stream",
    "StreamStalled": "errors",
    "Summary": "analytics",
    "SystemClock": "clock",
    "TimeWindow": "breaker",
    "TripPolicy": "breaker",
    "VirtualClock": "clock",
    "cancel_scope": "cancel",
    "check_cancelled": "cancel",
    "classify": "errors",
    "current_scope": "cancel",
    "deadline": "cancel",
    "execute_with_recovery": "recovery",
    "is_retryable": "retry",
    "result_is_empty": "retry",
    "result_is_none": "retry",
    "summarize": "analytics",
}

__all__ = [
    "Action",
    "BackendError",
    "Backoff",
    "BreakerStats",
    "CancelScope",
    "Cancelled",
    "Category",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classification",
    "Classifier",
    "Clock",
    "ConsecutiveFailures",
    "CountWindow",
    "DaemonCheck",
    "DaemonLost",
    "DaemonUnavailable",
    "DeadlineExceeded",
    "DegradePolicy",
    "Degrader",
    "DiskCheck",
    "Event",
    "ExceptionFilter",
    "Fallback",
    "FallbackError",
    "GuardedStream",
    "HangDetected",
    "HealthCheck",
    "HealthMonitor",
    "HealthResult",
    "InvalidOutput",
    "Jitter",
    "Journal",
    "JournalFull",
    "JsonLinesLogger",
    "Level",
    "Limits",
    "MemoryCheck",
    "ModelFileCheck",
    "ModelNotFound",
    "Permit",
    "Profile",
    "RateLimited",
    "Recovery",
    "RecoveryContext",
    "ResilienceError",
    "ResilienceInterrupt",
    "ResourceExhausted",
    "Retry",
    "RetryDetails",
    "RetryError",
    "Rule",
    "ServerError",
    "Severity",
    "State",
    "Step",
    "StreamGuard",
    "StreamInterrupted",
    "StreamResult",
    "StreamStalled",
    "Summary",
    "SystemClock",
    "TimeWindow",
    "TripPolicy",
    "VirtualClock",
    "cancel_scope",
    "check_cancelled",
    "classify",
    "current_scope",
    "deadline",
    "execute_with_recovery",
    "fallback_point",
    "fell_back",
    "is_retryable",
    "result_is_empty",
    "result_is_none",
    "retried",
    "summarize",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
