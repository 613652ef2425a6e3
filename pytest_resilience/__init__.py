"""pytest-resilience: a resilience core for local-LLM applications, and the tools to test it.

The names here are the core, safe to use in production code: importing them pulls in
neither pytest nor llama-cpp-python nor httpx. The model backends live in
``pytest_resilience.backends``, the event records in ``pytest_resilience.core.events``, the
fault injector in the separate ``faults`` package, and the pytest plugin registers itself.

Every name is imported on first use (PEP 562): pytest imports this package in every run of
every user who installs the plugin, and most runs need none of the core.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends.embed_cache import EmbeddingCache, EmbeddingMatch
    from .core.alerts import Alert, AlertRule, Alerts, BreakerOpened, ErrorRate, FailureStreak
    from .core.analytics import Figures, Rolling, Summary, summarize
    from .core.app import fallback_point, fell_back, retried
    from .core.backoff import Backoff, Jitter
    from .core.breaker import BreakerStats, CircuitBreaker, Permit, State
    from .core.breaker_policy import (
        ConsecutiveFailures,
        CountWindow,
        HalfOpen,
        TimeWindow,
        TripPolicy,
    )
    from .core.cache import (
        CacheFileWarning,
        CacheMiss,
        CacheStats,
        ResponseCache,
        request_key,
    )
    from .core.cancel import CancelScope, cancel_scope, check_cancelled, current_scope, deadline
    from .core.classify import (
        Action,
        Category,
        Classification,
        Classifier,
        Rule,
        Severity,
        classify,
    )
    from .core.clock import Clock, SystemClock
    from .core.config import PolicyError, ResiliencePolicy, load_policy
    from .core.degrade import DegradePolicy, Degrader, Level, Limits, Profile
    from .core.errors import (
        BackendError,
        Cancelled,
        CheckpointError,
        CircuitOpenError,
        ConcurrentModelUse,
        DaemonLost,
        DaemonUnavailable,
        DeadlineExceeded,
        ExceptionFilter,
        FallbackError,
        HangDetected,
        InvalidOutput,
        ModelNotFound,
        RateLimited,
        ResilienceError,
        ResilienceInterrupt,
        ResourceExhausted,
        RetryError,
        ServerError,
        StreamInterrupted,
        StreamStalled,
    )
    from .core.events import Event
    from .core.fallback import CachedStep, Fallback, FallbackStep
    from .core.health import (
        CpuCheck,
        DaemonCheck,
        DiskCheck,
        HealthCheck,
        HealthMonitor,
        HealthResult,
        MemoryCheck,
        ModelFileCheck,
    )
    from .core.journal import Journal, JournalFull, JsonLinesLogger
    from .core.logs import JsonFormatter
    from .core.recovery import Checkpoint, CheckpointStore, RecoveryContext, execute_with_recovery
    from .core.retry import Retry, is_retryable, result_is_empty, result_is_none
    from .core.retry_run import RetryDetails
    from .core.status import Services
    from .core.stream import StreamGuard
    from .core.stream_base import StreamResult, Validator
    from .core.stream_sync import GuardedStream
    from .core.trace import Span, current_span, span
    from .core.virtual_clock import VirtualClock

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "fallback_point": "core.app",
    "fell_back": "core.app",
    "retried": "core.app",
    "Action": "core.classify",
    "BackendError": "core.errors",
    "Backoff": "core.backoff",
    "BreakerStats": "core.breaker",
    "CancelScope": "core.cancel",
    "Cancelled": "core.errors",
    "Category": "core.classify",
    "Checkpoint": "core.recovery",
    "CheckpointError": "core.errors",
    "CheckpointStore": "core.recovery",
    "CircuitBreaker": "core.breaker",
    "CircuitOpenError": "core.errors",
    "ConcurrentModelUse": "core.errors",
    "Classification": "core.classify",
    "Classifier": "core.classify",
    "Clock": "core.clock",
    "ConsecutiveFailures": "core.breaker_policy",
    "CountWindow": "core.breaker_policy",
    "CpuCheck": "core.health",
    "DaemonCheck": "core.health",
    "DaemonLost": "core.errors",
    "DaemonUnavailable": "core.errors",
    "DeadlineExceeded": "core.errors",
    "DegradePolicy": "core.degrade",
    "Degrader": "core.degrade",
    "DiskCheck": "core.health",
    "Event": "core.events",
    "ExceptionFilter": "core.errors",
    "Fallback": "core.fallback",
    "FallbackError": "core.errors",
    "GuardedStream": "core.stream_sync",
    "HangDetected": "core.errors",
    "ResilienceInterrupt": "core.errors",
    "HealthCheck": "core.health",
    "HealthMonitor": "core.health",
    "HealthResult": "core.health",
    "InvalidOutput": "core.errors",
    "Jitter": "core.backoff",
    "Journal": "core.journal",
    "JournalFull": "core.journal",
    "JsonLinesLogger": "core.journal",
    "Level": "core.degrade",
    "Limits": "core.degrade",
    "MemoryCheck": "core.health",
    "ModelFileCheck": "core.health",
    "ModelNotFound": "core.errors",
    "Permit": "core.breaker",
    "Profile": "core.degrade",
    "RateLimited": "core.errors",
    "HalfOpen": "core.breaker_policy",
    "RecoveryContext": "core.recovery",
    "ResilienceError": "core.errors",
    "ResourceExhausted": "core.errors",
    "Retry": "core.retry",
    "RetryDetails": "core.retry_run",
    "RetryError": "core.errors",
    "Rule": "core.classify",
    "ServerError": "core.errors",
    "Severity": "core.classify",
    "State": "core.breaker",
    "FallbackStep": "core.fallback",
    "CachedStep": "core.fallback",
    "CacheFileWarning": "core.cache",
    "CacheMiss": "core.cache",
    "CacheStats": "core.cache",
    "ResponseCache": "core.cache",
    "request_key": "core.cache",
    "EmbeddingCache": "backends.embed_cache",
    "EmbeddingMatch": "backends.embed_cache",
    "StreamGuard": "core.stream",
    "StreamInterrupted": "core.errors",
    "StreamResult": "core.stream_base",
    "Validator": "core.stream_base",
    "Alert": "core.alerts",
    "AlertRule": "core.alerts",
    "Alerts": "core.alerts",
    "BreakerOpened": "core.alerts",
    "ErrorRate": "core.alerts",
    "FailureStreak": "core.alerts",
    "StreamStalled": "core.errors",
    "Summary": "core.analytics",
    "Figures": "core.analytics",
    "Rolling": "core.analytics",
    "Services": "core.status",
    "PolicyError": "core.config",
    "ResiliencePolicy": "core.config",
    "load_policy": "core.config",
    "JsonFormatter": "core.logs",
    "Span": "core.trace",
    "current_span": "core.trace",
    "span": "core.trace",
    "SystemClock": "core.clock",
    "TimeWindow": "core.breaker_policy",
    "TripPolicy": "core.breaker_policy",
    "VirtualClock": "core.virtual_clock",
    "cancel_scope": "core.cancel",
    "check_cancelled": "core.cancel",
    "classify": "core.classify",
    "current_scope": "core.cancel",
    "deadline": "core.cancel",
    "execute_with_recovery": "core.recovery",
    "is_retryable": "core.retry",
    "result_is_empty": "core.retry",
    "result_is_none": "core.retry",
    "summarize": "core.analytics",
}

__all__ = [
    "Action",
    "Alert",
    "AlertRule",
    "Alerts",
    "BackendError",
    "Backoff",
    "BreakerOpened",
    "BreakerStats",
    "CacheFileWarning",
    "CacheMiss",
    "CacheStats",
    "CachedStep",
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
    "ConcurrentModelUse",
    "ConsecutiveFailures",
    "CountWindow",
    "CpuCheck",
    "DaemonCheck",
    "DaemonLost",
    "DaemonUnavailable",
    "DeadlineExceeded",
    "DegradePolicy",
    "Degrader",
    "DiskCheck",
    "EmbeddingCache",
    "EmbeddingMatch",
    "ErrorRate",
    "Event",
    "ExceptionFilter",
    "FailureStreak",
    "Fallback",
    "FallbackError",
    "FallbackStep",
    "Figures",
    "GuardedStream",
    "HalfOpen",
    "HangDetected",
    "HealthCheck",
    "HealthMonitor",
    "HealthResult",
    "InvalidOutput",
    "Jitter",
    "Journal",
    "JournalFull",
    "JsonFormatter",
    "JsonLinesLogger",
    "Level",
    "Limits",
    "MemoryCheck",
    "ModelFileCheck",
    "ModelNotFound",
    "Permit",
    "PolicyError",
    "Profile",
    "RateLimited",
    "RecoveryContext",
    "ResilienceError",
    "ResilienceInterrupt",
    "ResiliencePolicy",
    "ResourceExhausted",
    "ResponseCache",
    "Retry",
    "RetryDetails",
    "RetryError",
    "Rolling",
    "Rule",
    "ServerError",
    "Services",
    "Severity",
    "Span",
    "State",
    "StreamGuard",
    "StreamInterrupted",
    "StreamResult",
    "StreamStalled",
    "Summary",
    "SystemClock",
    "TimeWindow",
    "TripPolicy",
    "Validator",
    "VirtualClock",
    "cancel_scope",
    "check_cancelled",
    "classify",
    "current_scope",
    "current_span",
    "deadline",
    "execute_with_recovery",
    "fallback_point",
    "fell_back",
    "is_retryable",
    "load_policy",
    "request_key",
    "result_is_empty",
    "result_is_none",
    "retried",
    "span",
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
