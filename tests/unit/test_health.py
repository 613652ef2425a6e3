"""Health checks as data, and the monitor that runs them on the injected clock."""

from __future__ import annotations

import math
import os
import struct
import threading
from typing import TYPE_CHECKING

import pytest

from pytest_resilience.core.clock import SystemClock, VirtualClock
from pytest_resilience.core.events import HealthChecked
from pytest_resilience.core.health import (
    CpuCheck,
    CpuLoad,
    DaemonCheck,
    DiskCheck,
    HealthCheck,
    HealthMonitor,
    HealthResult,
    MemoryCheck,
    MemoryInfo,
    ModelFileCheck,
    read_cpu_load,
    read_memory,
)
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


def test_result_details_are_read_only() -> None:
    source = {"latency": 0.1}
    result = HealthResult("x", True, "up", source)
    source["latency"] = 9.0  # the result took a copy
    assert result.details == {"latency": 0.1}
    with pytest.raises(TypeError):
        result.details["latency"] = 2.0  # type: ignore[index]


# ------------------------------------------------------------------------------ daemon


def test_daemon_check_up_with_latency(vclock: VirtualClock) -> None:
    check = DaemonCheck(lambda: vclock.sleep(0.2), slow_after=1.0, clock=vclock)
    result = check()
    assert (result.name, result.healthy, result.message) == ("daemon", True, "up")
    assert result.latency == pytest.approx(0.2)
    assert result.details == {"latency": pytest.approx(0.2), "slow": False}
    assert isinstance(check, HealthCheck)


def test_daemon_check_slow_is_healthy_but_flagged(vclock: VirtualClock) -> None:
    result = DaemonCheck(lambda: vclock.sleep(3.0), slow_after=1.0, clock=vclock)()
    assert result.healthy
    assert result.details["slow"] is True
    assert result.message.startswith("slow: 3s")


def test_daemon_check_down_when_the_ping_raises(vclock: VirtualClock) -> None:
    def ping() -> None:
        vclock.sleep(0.01)
        raise ConnectionRefusedError("connection refused")

    result = DaemonCheck(ping, clock=vclock)()
    assert not result.healthy
    assert result.message == "down: ConnectionRefusedError: connection refused"
    assert result.details["error"] == "ConnectionRefusedError: connection refused"
    assert result.latency == pytest.approx(0.01)


def test_daemon_check_down_when_the_ping_says_false(vclock: VirtualClock) -> None:
    result = DaemonCheck(lambda: False, name="llama-server", clock=vclock)()
    assert (result.name, result.healthy, result.message) == (
        "llama-server",
        False,
        "down: ping failed",
    )


def test_daemon_check_lets_keyboard_interrupt_through(vclock: VirtualClock) -> None:
    def ping() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        DaemonCheck(ping, clock=vclock)()


# -------------------------------------------------------------------------- model file


def gguf(path: Path, magic: bytes = b"GGUF", version: int = 3, body: bytes = b"\0" * 32) -> Path:
    path.write_bytes(magic + struct.pack("<I", version) + body)
    return path


def test_model_file_with_gguf_magic_is_healthy(tmp_path: Path) -> None:
    path = gguf(tmp_path / "model.gguf")
    result = ModelFileCheck(path)()
    assert (result.healthy, result.message) == (True, "present")
    assert result.details == {"path": str(path), "size": 40, "version": 3}


def test_model_file_with_foreign_magic_is_unhealthy(tmp_path: Path) -> None:
    path = gguf(tmp_path / "model.gguf", magic=b"PK\x03\x04")
    result = ModelFileCheck(path)()
    assert not result.healthy
    assert "not a GGUF file" in result.message
    assert "PK" in result.message


def test_missing_small_and_directory_model_files_are_unhealthy(tmp_path: Path) -> None:
    (tmp_path / "tiny.gguf").write_bytes(b"GGU")
    (tmp_path / "dir.gguf").mkdir()
    messages = {
        name: ModelFileCheck(tmp_path / name)().message
        for name in ("absent.gguf", "tiny.gguf", "dir.gguf")
    }
    assert messages == {
        "absent.gguf": "missing",
        "tiny.gguf": "too small for a GGUF header (3 bytes)",
        "dir.gguf": "not a regular file",
    }


def test_model_file_loadable_check_uses_the_given_loader(tmp_path: Path) -> None:
    path = gguf(tmp_path / "model.gguf")
    loaded: list[Path] = []
    ok = ModelFileCheck(path, load=loaded.append)()
    assert (ok.healthy, ok.message, loaded) == (True, "present and loadable", [path])

    def refuse(p: Path) -> None:
        raise ValueError(f"Failed to load model from file: {p.name}")

    bad = ModelFileCheck(path, load=refuse)()
    assert not bad.healthy
    assert bad.message == "not loadable: ValueError: Failed to load model from file: model.gguf"


# ------------------------------------------------------------------------ memory, disk


def test_read_memory_parses_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    4000000 kB\n"
    )
    assert read_memory(meminfo) == MemoryInfo(16_000_000 * 1024, 4_000_000 * 1024)


def test_read_memory_rejects_a_meminfo_without_the_fields(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\n")
    with pytest.raises(ValueError, match="MemAvailable"):
        read_memory(meminfo)


def test_read_memory_falls_back_to_psutil(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    info = read_memory(tmp_path / "no-such-meminfo")
    assert info.total == psutil.virtual_memory().total
    assert 0 < info.available <= info.total


@pytest.mark.parametrize(
    ("available", "healthy"), [(2000, True), (1000, True), (999, False), (0, False)]
)
def test_memory_check_threshold_is_90_percent(available: int, healthy: bool) -> None:
    result = MemoryCheck(read=lambda: MemoryInfo(10_000, available))()
    assert result.healthy is healthy
    assert result.details["used_fraction"] == pytest.approx(1 - available / 10_000)
    assert result.details["threshold"] == 0.9


def test_memory_check_reports_an_unreadable_source() -> None:
    def broken() -> MemoryInfo:
        raise OSError("no meminfo")

    result = MemoryCheck(read=broken)()
    assert (result.healthy, result.message) == (False, "unknown: OSError: no meminfo")


def test_memory_check_on_this_machine_returns_a_fraction() -> None:
    result = MemoryCheck()()
    used = result.details["used_fraction"]
    assert isinstance(used, float)
    assert 0.0 <= used <= 1.0


@pytest.mark.parametrize(("used", "healthy"), [(50, True), (90, True), (91, False)])
def test_disk_check_threshold_is_90_percent(tmp_path: Path, used: int, healthy: bool) -> None:
    seen: list[object] = []

    def usage(path: object) -> tuple[int, int, int]:
        seen.append(path)
        return (100, used, 100 - used)

    result = DiskCheck(tmp_path, usage=usage)()
    assert result.healthy is healthy
    assert seen == [tmp_path]
    assert result.details["free"] == 100 - used


def _statvfs_usage(path: Path) -> tuple[int, int, int]:
    """(total, used, free) of the filesystem holding ``path``, in bytes, from ``statvfs``:
    free is what an unprivileged user may still write, used excludes the reserved blocks."""
    st = os.statvfs(path)
    return (
        st.f_blocks * st.f_frsize,
        (st.f_blocks - st.f_bfree) * st.f_frsize,
        st.f_bavail * st.f_frsize,
    )


def _between(value: object, a: float, b: float) -> bool:
    return isinstance(value, (int, float)) and min(a, b) <= value <= max(a, b)


def test_disk_check_on_a_real_directory(tmp_path: Path) -> None:
    # Other processes write to the same filesystem while the check reads it: the figures
    # the check saw lie between a read just before and one just after (the same read when
    # nothing changed in between, which a few tries almost always find)
    for _ in range(20):
        before = _statvfs_usage(tmp_path)
        result = DiskCheck(tmp_path)()
        after = _statvfs_usage(tmp_path)
        if before == after:
            break
    total, used, free = before
    assert result.details["path"] == str(tmp_path)
    assert result.details["total"] == total == after[0]  # a filesystem keeps its size
    assert _between(result.details["free"], free, after[2])
    fraction = result.details["used_fraction"]
    assert _between(fraction, used / total, after[1] / total)  # used of the total, not 1 - free
    assert result.details["threshold"] == 0.9
    assert isinstance(fraction, float)
    assert result.healthy is (fraction <= 0.9)
    state = "ok" if result.healthy else "low headroom"
    assert result.message == f"{state}: {fraction:.0%} used (limit 90%)"


def test_disk_check_on_a_missing_path_is_unhealthy(tmp_path: Path) -> None:
    result = DiskCheck(tmp_path / "gone")()
    assert not result.healthy
    assert result.message.startswith("unknown: FileNotFoundError")


# ----------------------------------------------------------------------------- monitor


class Counting:
    """A check that counts its runs and answers what it is told."""

    def __init__(self, name: str, healthy: bool = True) -> None:
        self.name = name
        self.healthy = healthy
        self.runs = 0

    def __call__(self) -> HealthResult:
        self.runs += 1
        return HealthResult(self.name, self.healthy, "ok" if self.healthy else "bad")


def test_monitor_runs_checks_when_due_on_the_clock(vclock: VirtualClock) -> None:
    journal = Journal()
    a, b = Counting("a"), Counting("b", healthy=False)
    monitor = HealthMonitor([a, b], interval=30.0, clock=vclock, journal=journal)

    assert [r.name for r in monitor.run_due()] == ["a", "b"]  # all due at first
    assert monitor.run_due() == []
    assert monitor.next_due() == 30.0
    vclock.advance(29.9)
    assert monitor.run_due() == []
    vclock.advance(0.1)
    assert len(monitor.run_due()) == 2
    assert (a.runs, b.runs) == (2, 2)

    assert [(e.check, e.healthy, e.message, e.time) for e in journal.events(HealthChecked)] == [
        ("a", True, "ok", 0.0),
        ("b", False, "bad", 0.0),
        ("a", True, "ok", 30.0),
        ("b", False, "bad", 30.0),
    ]
    assert not monitor.is_healthy()
    b.healthy = True
    monitor.run_all()
    assert monitor.is_healthy()
    assert set(monitor.results) == {"a", "b"}


def test_monitor_turns_a_raising_check_into_an_unhealthy_result(vclock: VirtualClock) -> None:
    class Broken:
        name = "broken"

        def __call__(self) -> HealthResult:
            raise RuntimeError("bug in the check")

    monitor = HealthMonitor([Broken()], clock=vclock)
    (result,) = monitor.run_due()
    assert not result.healthy
    assert result.message == "check raised RuntimeError: bug in the check"
    assert monitor.results["broken"] is result


def test_monitor_is_not_healthy_before_every_check_has_run(vclock: VirtualClock) -> None:
    monitor = HealthMonitor([Counting("a")], clock=vclock)
    assert not monitor.is_healthy()
    monitor.run_due()
    assert monitor.is_healthy()


def test_monitor_rejects_duplicate_names_and_bad_intervals(vclock: VirtualClock) -> None:
    with pytest.raises(ValueError, match="unique"):
        HealthMonitor([Counting("a"), Counting("a")], clock=vclock)
    with pytest.raises(ValueError, match="interval"):
        HealthMonitor([Counting("a")], interval=0.0, clock=vclock)


def test_monitor_thread_runs_and_stop_joins_it() -> None:
    ran = threading.Event()

    class Signalling(Counting):
        def __call__(self) -> HealthResult:
            result = super().__call__()
            ran.set()
            return result

    check = Signalling("a")
    # a long interval on the real clock: stop() must wake the thread, not wait an hour
    monitor = HealthMonitor([check], interval=3600.0, clock=SystemClock())
    monitor.start()
    try:
        assert ran.wait(5.0)
        with pytest.raises(RuntimeError, match="already running"):
            monitor.start()
    finally:
        assert monitor.stop(5.0)
    assert check.runs == 1
    assert not [t for t in threading.enumerate() if t.name == "pytest-resilience-health"]
    assert monitor.stop()  # idempotent


# ----------------------------------------------------------------------------------- cpu


def load(value: float, cpus: int = 2) -> Callable[[], CpuLoad]:
    return lambda: CpuLoad(value, cpus)


@pytest.mark.parametrize(
    ("value", "healthy", "message"),
    [
        (0.5, True, "ok: load 0.50 on 2 CPUs, 0.25 per CPU (limit 2)"),
        (4.0, True, "ok: load 4.00 on 2 CPUs, 2.00 per CPU (limit 2)"),  # at the limit
        (4.2, False, "overloaded: load 4.20 on 2 CPUs, 2.10 per CPU (limit 2)"),
    ],
)
def test_cpu_check_threshold_is_two_per_cpu(
    vclock: VirtualClock, value: float, healthy: bool, message: str
) -> None:
    result = CpuCheck(read=load(value), clock=vclock)()
    assert (result.name, result.healthy, result.message) == ("cpu", healthy, message)
    assert result.details == {
        "load": value,
        "cpus": 2,
        "threshold": 2.0,
        "load_per_cpu": value / 2,
    }


def test_cpu_check_threshold_argument_and_one_cpu() -> None:
    result = CpuCheck(threshold=0.5, read=load(0.6, cpus=1))()
    assert not result.healthy
    assert result.message == "overloaded: load 0.60 on 1 CPU, 0.60 per CPU (limit 0.5)"
    assert CpuCheck(threshold=0.75, read=load(1.5, cpus=2))().healthy


@pytest.mark.parametrize("threshold", [0, -1.0, math.inf, math.nan, "2", True])
def test_cpu_check_refuses_a_bad_threshold(threshold: object) -> None:
    with pytest.raises(ValueError, match=r"CpuCheck threshold must be"):
        CpuCheck(threshold=threshold)  # type: ignore[arg-type]


def test_cpu_check_reports_an_unreadable_or_meaningless_load() -> None:
    def no_load() -> CpuLoad:
        raise OSError("this platform has no load average (no os.getloadavg)")

    result = CpuCheck(read=no_load)()
    assert not result.healthy
    assert (
        result.message == "unknown: OSError: this platform has no load average (no os.getloadavg)"
    )
    for reading in (CpuLoad(math.nan, 2), CpuLoad(-1.0, 2), CpuLoad(1.0, 0)):
        result = CpuCheck(read=lambda r=reading: r)()  # type: ignore[misc]
        assert not result.healthy
        assert result.message.startswith("unknown: load ")


def test_read_cpu_load_reads_the_load_average_and_the_cpu_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 2.0, 1.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert read_cpu_load() == CpuLoad(3.5, 4)  # the one-minute average
    result = CpuCheck()()  # the default reading goes through them
    assert result.message == "ok: load 3.50 on 4 CPUs, 0.88 per CPU (limit 2)"
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    with pytest.raises(OSError, match=r"number of CPUs is unknown"):
        read_cpu_load()
    monkeypatch.delattr(os, "getloadavg")
    with pytest.raises(OSError, match=r"no load average"):
        read_cpu_load()
    assert CpuCheck()().message == (
        "unknown: OSError: this platform has no load average (no os.getloadavg)"
    )
