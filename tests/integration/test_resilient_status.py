"""ResilientClient.status() over the real tiny model in process, with its daemon down."""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING

from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.daemon import DaemonBackend
from pytest_resilience.backends.resilient import ResilientClient
from pytest_resilience.core.breaker import State
from pytest_resilience.core.health import CpuCheck, CpuLoad, DiskCheck, MemoryCheck, MemoryInfo

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from pytest_resilience.backends.llama import LlamaBackend
    from pytest_resilience.core.health import HealthCheck
    from pytest_resilience.core.journal import Journal

SHORT = GenerationParams(max_tokens=4, temperature=0.0, seed=1)


def _closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_status_of_a_client_answering_in_process_while_its_daemon_is_down(
    llama_backend: LlamaBackend, journal: Journal
) -> None:
    daemon = DaemonBackend(f"http://127.0.0.1:{_closed_port()}")
    resources: list[HealthCheck] = [
        MemoryCheck(read=lambda: MemoryInfo(1000, 500)),
        DiskCheck(usage=lambda _p: (100, 10, 90)),
    ]
    with ResilientClient(daemon, llama_backend, journal=journal) as client:
        report = client.status(resources=resources)
        assert report["status"] == "healthy"  # nothing asked yet: the daemon is not known down
        expected = llama_backend.generate("Hello", SHORT)
        for _ in range(3):
            assert client.generate("Hello", SHORT) == expected
        assert client.breaker.state is State.OPEN
        report = client.status(resources=resources)
    daemon.close()
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert report["status"] == "degraded"  # answered in process: degraded, not down
    services = report["services"]
    assert isinstance(services, dict)
    assert services["daemon"]["status"] == "unhealthy"
    assert services["daemon"]["breaker"] == "open"
    assert services["daemon"]["checks"]["daemon"]["healthy"] is False
    assert services["direct"]["status"] == "healthy"
    assert services["direct"]["checks"]["model"]["healthy"] is True
    assert services["resources"]["status"] == "healthy"
    reasons = report["reasons"]
    assert isinstance(reasons, list)
    assert "daemon: breaker 'resilient.daemon' is open" in reasons
    assert "daemon: daemon: down: ping failed" in reasons


def test_status_with_a_missing_model_file_is_unhealthy(
    llama_backend: LlamaBackend, journal: Journal, tmp_path: Path
) -> None:
    daemon = DaemonBackend(f"http://127.0.0.1:{_closed_port()}")
    with ResilientClient(daemon, llama_backend, journal=journal) as client:
        original = llama_backend.model_path
        try:
            llama_backend.model_path = str(tmp_path / "gone.gguf")
            report = client.status(resources=[])
        finally:
            llama_backend.model_path = original
    daemon.close()
    assert report["status"] == "unhealthy"
    assert report["services"]["direct"]["checks"]["model"]["healthy"] is False  # type: ignore[index]


def test_status_checks_the_cpu_load_with_memory_and_disk(
    llama_backend: LlamaBackend, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the default resources read the machine: its load average is replaced by one that
    # overloads it, so the test does not depend on how busy the machine is
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 1.0, 1.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    daemon = DaemonBackend(f"http://127.0.0.1:{_closed_port()}")
    with ResilientClient(daemon, llama_backend, journal=journal) as client:
        report = client.status()
        resources = report["services"]["resources"]  # type: ignore[index]
        assert set(resources["checks"]) == {"memory", "disk", "cpu"}
        cpu = resources["checks"]["cpu"]
        assert cpu["healthy"] is False
        assert cpu["message"] == "overloaded: load 9.00 on 2 CPUs, 4.50 per CPU (limit 2)"
        assert resources["status"] == "unhealthy"
        assert report["status"] == "degraded"  # resources are not critical
        assert "resources: cpu: " + cpu["message"] in report["reasons"]  # type: ignore[operator]
        calm = client.status(resources=[CpuCheck(read=lambda: CpuLoad(0.5, 2))])
    daemon.close()
    assert calm["status"] == "healthy"
