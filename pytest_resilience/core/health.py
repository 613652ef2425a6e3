"""Health checks that return data, and a monitor that runs them on a schedule.

::

    monitor = HealthMonitor(
        [
            DaemonCheck(daemon.ping, slow_after=2.0),       # any callable that pings
            ModelFileCheck(model_path, load=try_load),      # present, GGUF, readable, loadable
            MemoryCheck(),                                  # unhealthy above 90 % used
            DiskCheck(cache_dir),                           # unhealthy above 90 % used
            CpuCheck(),                                     # unhealthy above 2 per CPU
        ],
        interval=30.0, clock=clock, journal=journal,
    )
    monitor.run_due()            # run what is due now (tests, or a caller's own loop)
    monitor.start(); ...; monitor.stop()     # or a worker thread, joined by stop()

A check is any callable returning a :class:`HealthResult` and having a ``name``. Checks
never raise for an unhealthy target: every failure becomes ``healthy=False`` with a message
and details; the monitor also turns an exception from a check of the caller's own into an
unhealthy result. :class:`~pytest_resilience.core.errors.Cancelled` and
:class:`~pytest_resilience.core.errors.HangDetected` are not failures of the target (they are
``BaseException`` subclasses): they propagate from the check and from ``run_due()``, and end
the monitor's worker thread, whose exception the thread hook reports (pytest fails the test).
Each check measures its latency on its ``clock``.

The core stays free of HTTP clients: :class:`DaemonCheck` takes the ping as a callable, and
the daemon backend passes its own. Memory comes from ``/proc/meminfo`` (Linux), else from
psutil, imported only then.

CPU load is the operating system's one-minute load average (``os.getloadavg()``: the
number of tasks running or waiting to run, averaged over about a minute; on Linux tasks
waiting for disk I/O count too) divided by the machine's CPUs (``os.cpu_count()``). It is
a queue length, not a percentage: 1.0 per CPU means every CPU is busy and nothing waits;
2.0 means work waits about as long as it runs. It follows a burst within a minute, not at
once, and it is the whole machine's load, not this process's. Windows has no load average:
there :class:`CpuCheck` reports an unknown load as unhealthy, as the other checks do for a
reading they cannot get.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from .clock import Clock, SystemClock
from .events import HealthChecked

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from .journal import Journal

__all__ = [
    "CpuCheck",
    "CpuLoad",
    "DaemonCheck",
    "DiskCheck",
    "HealthCheck",
    "HealthMonitor",
    "HealthResult",
    "MemoryCheck",
    "MemoryInfo",
    "ModelFileCheck",
    "read_cpu_load",
    "read_memory",
]

GGUF_MAGIC = b"GGUF"
DEFAULT_THRESHOLD = 0.90  # the seeds: unhealthy above 90 % of memory or disk used
DEFAULT_CPU_THRESHOLD = 2.0  # unhealthy above 2 runnable tasks per CPU (load average)


@dataclass(frozen=True, slots=True)
class HealthResult:
    """The outcome of one check. ``details`` is read-only; ``latency`` is in seconds."""

    name: str
    healthy: bool
    message: str
    details: Mapping[str, object] = field(default_factory=dict)
    latency: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))


@runtime_checkable
class HealthCheck(Protocol):
    """A named callable that checks one thing and never raises for an unhealthy target."""

    @property
    def name(self) -> str: ...

    def __call__(self) -> HealthResult: ...


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# ------------------------------------------------------------------------------ daemon


@dataclass(frozen=True, slots=True)
class DaemonCheck:
    """Ping the model daemon and time it.

    ``ping`` raises or returns False when the daemon is down; anything else is healthy. A
    ping slower than ``slow_after`` seconds is still healthy, with ``details["slow"]`` true.
    """

    ping: Callable[[], object]
    slow_after: float | None = None
    name: str = "daemon"
    clock: Clock = field(default_factory=SystemClock)

    def __call__(self) -> HealthResult:
        start = self.clock.now()
        try:
            answer = self.ping()
        except Exception as exc:  # noqa: BLE001 - a health check turns every failure into data
            latency = self.clock.now() - start
            details = {"latency": latency, "error": _describe(exc)}
            return HealthResult(self.name, False, f"down: {_describe(exc)}", details, latency)
        latency = self.clock.now() - start
        if answer is False:
            return HealthResult(
                self.name, False, "down: ping failed", {"latency": latency}, latency
            )
        slow = self.slow_after is not None and latency > self.slow_after
        message = f"slow: {latency:.3g}s (threshold {self.slow_after}s)" if slow else "up"
        return HealthResult(self.name, True, message, {"latency": latency, "slow": slow}, latency)


# -------------------------------------------------------------------------- model file


@dataclass(frozen=True, slots=True)
class ModelFileCheck:
    """The model file: present, a regular file, readable, GGUF magic, and loadable.

    ``load`` (optional) is called with the path to prove the model loads; it raises if not.
    Details: ``path``, ``size`` and the GGUF ``version`` when the header could be read.
    """

    path: str | os.PathLike[str]
    load: Callable[[Path], object] | None = None
    name: str = "model"
    clock: Clock = field(default_factory=SystemClock)

    def __call__(self) -> HealthResult:
        start = self.clock.now()
        healthy, message, details = self._inspect(Path(self.path))
        return HealthResult(self.name, healthy, message, details, self.clock.now() - start)

    def _inspect(self, path: Path) -> tuple[bool, str, dict[str, object]]:
        details: dict[str, object] = {"path": str(path)}
        try:
            if not path.exists():
                return False, "missing", details
            if not path.is_file():
                return False, "not a regular file", details
            details["size"] = size = path.stat().st_size
            with path.open("rb") as f:
                head = f.read(8)
        except OSError as exc:
            return False, f"unreadable: {_describe(exc)}", details
        if len(head) < 8:
            return False, f"too small for a GGUF header ({size} bytes)", details
        if head[:4] != GGUF_MAGIC:
            return False, f"not a GGUF file (magic {head[:4]!r}, expected {GGUF_MAGIC!r})", details
        details["version"] = struct.unpack("<I", head[4:8])[0]
        if self.load is not None:
            try:
                self.load(path)
            except Exception as exc:  # noqa: BLE001 - a health check turns every failure into data
                details["error"] = _describe(exc)
                return False, f"not loadable: {_describe(exc)}", details
        return True, "present and loadable" if self.load is not None else "present", details


# ------------------------------------------------------------------- memory, disk, cpu


class MemoryInfo(NamedTuple):
    total: int  # bytes
    available: int  # bytes


def read_memory(meminfo: str | os.PathLike[str] = "/proc/meminfo") -> MemoryInfo:
    """Total and available memory, from ``meminfo`` (Linux) or psutil.

    Raises ``OSError`` if neither is available, ``ValueError`` if ``meminfo`` lacks the
    fields.
    """
    try:
        text = Path(meminfo).read_text()
    except OSError:
        try:
            import psutil  # type: ignore[import-untyped]  # noqa: PLC0415 - optional; off Linux only
        except ImportError:
            raise OSError(f"cannot read {meminfo} and psutil is not installed") from None
        vm = psutil.virtual_memory()
        return MemoryInfo(int(vm.total), int(vm.available))
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    if "MemTotal" not in fields or "MemAvailable" not in fields:
        raise ValueError(f"{meminfo} has no MemTotal/MemAvailable lines")
    return MemoryInfo(fields["MemTotal"], fields["MemAvailable"])


def _usage_result(
    name: str, used: float, threshold: float, details: dict[str, object], latency: float
) -> HealthResult:
    details["used_fraction"] = used
    details["threshold"] = threshold
    if not math.isfinite(used):
        return HealthResult(name, False, "usage unknown", details, latency)
    healthy = used <= threshold
    state = "ok" if healthy else "low headroom"
    return HealthResult(
        name, healthy, f"{state}: {used:.0%} used (limit {threshold:.0%})", details, latency
    )


@dataclass(frozen=True, slots=True)
class MemoryCheck:
    """Unhealthy when more than ``threshold`` of memory is in use (available counts as free)."""

    threshold: float = DEFAULT_THRESHOLD
    read: Callable[[], MemoryInfo] = read_memory
    name: str = "memory"
    clock: Clock = field(default_factory=SystemClock)

    def __call__(self) -> HealthResult:
        start = self.clock.now()
        try:
            info = self.read()
        except (OSError, ValueError) as exc:
            latency = self.clock.now() - start
            return HealthResult(self.name, False, f"unknown: {_describe(exc)}", {}, latency)
        used = 1.0 - info.available / info.total if info.total > 0 else math.nan
        details: dict[str, object] = {"total": info.total, "available": info.available}
        return _usage_result(self.name, used, self.threshold, details, self.clock.now() - start)


@dataclass(frozen=True, slots=True)
class DiskCheck:
    """Unhealthy when more than ``threshold`` of the disk holding ``path`` is in use."""

    path: str | os.PathLike[str] = "."
    threshold: float = DEFAULT_THRESHOLD
    usage: Callable[[str | os.PathLike[str]], tuple[int, int, int]] = shutil.disk_usage
    name: str = "disk"
    clock: Clock = field(default_factory=SystemClock)

    def __call__(self) -> HealthResult:
        start = self.clock.now()
        details: dict[str, object] = {"path": str(self.path)}
        try:
            total, used_bytes, free = self.usage(self.path)
        except OSError as exc:
            latency = self.clock.now() - start
            return HealthResult(self.name, False, f"unknown: {_describe(exc)}", details, latency)
        details.update(total=total, free=free)
        used = used_bytes / total if total > 0 else math.nan
        return _usage_result(self.name, used, self.threshold, details, self.clock.now() - start)


class CpuLoad(NamedTuple):
    load: float  # the one-minute load average
    cpus: int  # the machine's CPUs


def read_cpu_load() -> CpuLoad:
    """The one-minute load average (``os.getloadavg()``) and the machine's CPU count
    (``os.cpu_count()``). Raises ``OSError`` where there is no load average (Windows), it
    cannot be read, or the CPU count is unknown."""
    getloadavg = getattr(os, "getloadavg", None)
    if getloadavg is None:
        raise OSError("this platform has no load average (no os.getloadavg)")
    load = float(getloadavg()[0])
    cpus = os.cpu_count()
    if not cpus:
        raise OSError("the number of CPUs is unknown (os.cpu_count() returned None)")
    return CpuLoad(load, cpus)


@dataclass(frozen=True, slots=True)
class CpuCheck:
    """Unhealthy when the one-minute load average per CPU is above ``threshold`` (see the
    module docs for what the load average counts). ``read`` returns a :class:`CpuLoad`
    (default :func:`read_cpu_load`); give your own to test without the machine's load.

    Raises ``ValueError`` for a threshold that is not a positive number.
    """

    threshold: float = DEFAULT_CPU_THRESHOLD
    read: Callable[[], CpuLoad] = read_cpu_load
    name: str = "cpu"
    clock: Clock = field(default_factory=SystemClock)

    def __post_init__(self) -> None:
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError(f"CpuCheck threshold must be a number, got {threshold!r}")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(
                f"CpuCheck threshold must be > 0 (load per CPU, e.g. 2.0), got {threshold!r}"
            )

    def __call__(self) -> HealthResult:
        start = self.clock.now()
        try:
            info = self.read()
        except (OSError, ValueError) as exc:
            latency = self.clock.now() - start
            return HealthResult(self.name, False, f"unknown: {_describe(exc)}", {}, latency)
        load, cpus = info
        details: dict[str, object] = {"load": load, "cpus": cpus, "threshold": self.threshold}
        latency = self.clock.now() - start
        if not (math.isfinite(load) and load >= 0 and cpus > 0):
            message = f"unknown: load {load!r} on {cpus!r} CPUs is not a reading"
            return HealthResult(self.name, False, message, details, latency)
        per_cpu = details["load_per_cpu"] = load / cpus
        healthy = per_cpu <= self.threshold
        state = "ok" if healthy else "overloaded"
        message = (
            f"{state}: load {load:.2f} on {cpus} CPU{'s' if cpus != 1 else ''}, "
            f"{per_cpu:.2f} per CPU (limit {self.threshold:g})"
        )
        return HealthResult(self.name, healthy, message, details, latency)


# ----------------------------------------------------------------------------- monitor


class HealthMonitor:
    """Runs checks every ``interval`` seconds of ``clock`` and keeps the latest results.

    Drive it with :meth:`run_due` (every check is due at once at first), or :meth:`start` a
    worker thread that :meth:`stop` joins. The thread waits on the clock, so it belongs with
    a real clock: under a virtual clock, waiting makes time jump, and the thread would run
    check after check; call :meth:`run_due` there instead. Every run appends a
    ``HealthChecked`` event. Raises ``ValueError`` for duplicate names or a bad interval.
    """

    def __init__(
        self,
        checks: Iterable[HealthCheck],
        *,
        interval: float = 30.0,
        clock: Clock | None = None,
        journal: Journal | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"HealthMonitor interval must be > 0 seconds, got {interval}")
        self.checks: tuple[HealthCheck, ...] = tuple(checks)
        names = [c.name for c in self.checks]
        if len(set(names)) != len(names):
            raise ValueError(f"health check names must be unique, got {names}")
        self.interval = interval
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.journal = journal
        self._due = dict.fromkeys(names, -math.inf)
        self._results: dict[str, HealthResult] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_due(self) -> list[HealthResult]:
        """Run every check that is due now; returns their results."""
        now = self.clock.now()
        with self._lock:
            due = [c for c in self.checks if self._due[c.name] <= now]
            for check in due:  # claimed before running, so two callers never run one twice
                self._due[check.name] = now + self.interval
        return [self._run(check) for check in due]

    def run_all(self) -> list[HealthResult]:
        """Run every check now, due or not, and restart their intervals."""
        with self._lock:
            self._due = dict.fromkeys(self._due, -math.inf)
        return self.run_due()

    def _run(self, check: HealthCheck) -> HealthResult:
        start = self.clock.now()
        try:
            result = check()
        except Exception as exc:  # noqa: BLE001 - isolation boundary: a broken check is a result
            result = HealthResult(
                check.name,
                False,
                f"check raised {_describe(exc)}",
                {"error": _describe(exc)},
                self.clock.now() - start,
            )
        with self._lock:
            self._results[check.name] = result
        if self.journal is not None:
            self.journal.append(
                HealthChecked(
                    time=self.clock.now(),
                    source="health",
                    check=result.name,
                    healthy=result.healthy,
                    message=result.message,
                )
            )
        return result

    def next_due(self) -> float:
        """Seconds until the next check is due (0 if one is due now)."""
        with self._lock:
            first = min(self._due.values(), default=math.inf)
        return max(0.0, first - self.clock.now())

    @property
    def results(self) -> Mapping[str, HealthResult]:
        """The latest result of each check that has run (a snapshot)."""
        with self._lock:
            return MappingProxyType(dict(self._results))

    def is_healthy(self) -> bool:
        """True when every check has run and its latest result is healthy."""
        with self._lock:
            results = dict(self._results)
        return len(results) == len(self.checks) and all(r.healthy for r in results.values())

    # -------------------------------------------------------------------------- thread

    def start(self) -> None:
        """Run the checks in a worker thread until :meth:`stop`. Raises if already running."""
        if self._thread is not None:
            raise RuntimeError("the health monitor is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="pytest-resilience-health", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_due()
            self.clock.wait(self._stop, self.next_due(), what="the health monitor")

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the worker thread and join it; True once it has ended (or never ran)."""
        thread = self._thread
        if thread is None:
            return True
        self._stop.set()
        thread.join(timeout)
        if thread.is_alive():  # kept, so a later stop() can join it: never silently left
            return False
        self._thread = None
        return True

    def __enter__(self) -> HealthMonitor:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
