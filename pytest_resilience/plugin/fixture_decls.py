"""The fixtures pytest sees, each a thin declaration whose implementation (and its imports)
lives in :mod:`~pytest_resilience.plugin.fixtures`, imported only when a test asks for one
of them, so that loading the plugin stays cheap. The entry point re-exports these
declarations, which is how pytest finds them (this module is not a plugin of its own);
:class:`LeakCheckPlugin` is the autouse leak check, registered only with the leak check on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_resilience.plugin.state import DaemonScope, settings_of, state_of

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pytest_resilience.backends.daemon import DaemonProcess
    from pytest_resilience.backends.llama import LlamaBackend
    from pytest_resilience.backends.resilient import ResilientClient
    from pytest_resilience.core.journal import Journal
    from pytest_resilience.plugin.fixtures import FaultsFactory, LeakCheck, TestClock

__all__ = [
    "LeakCheckPlugin",
    "clock",
    "daemon",
    "faults",
    "journal",
    "leak_check",
    "llama",
    "resilient_client",
    "tiny_model",
]


@pytest.fixture
def journal(request: pytest.FixtureRequest) -> Journal:
    """The test's :class:`~pytest_resilience.Journal`; injected faults land in it too."""
    return state_of(request.node).journal


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> Iterator[TestClock]:
    """A :class:`~pytest_resilience.plugin.fixtures.TestClock` (a VirtualClock) for this test;
    the sleeps of tenacity, stamina and backoff wait on it (not under
    ``virtual_time(sleeps=False)`` or ``real_time``); under virtual time, so do the test's
    event loops."""
    from pytest_resilience.plugin.fixtures import clock_fixture  # noqa: PLC0415

    yield from clock_fixture(request)


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> Iterator[FaultsFactory]:
    """``faults(spec, **options)`` installs an injector for the rest of the test; returns it."""
    from pytest_resilience.plugin.fixtures import faults_fixture  # noqa: PLC0415

    yield from faults_fixture(request)


@pytest.fixture
def leak_check(request: pytest.FixtureRequest) -> Iterator[LeakCheck]:
    """Fail the test if it leaves threads, fds, child processes or registered resources."""
    from pytest_resilience.plugin.fixtures import leak_check_fixture  # noqa: PLC0415

    yield from leak_check_fixture(request)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The path of the built-in tiny GGUF model (written on first use, never downloaded)."""
    from pytest_resilience.backends.tiny import tiny_model_path  # noqa: PLC0415

    return tiny_model_path()


@pytest.fixture
def llama(tiny_model: Path) -> Iterator[LlamaBackend]:
    """A :class:`LlamaBackend` on the tiny model (``n_threads=1``), closed at teardown."""
    from pytest_resilience.plugin.fixtures import llama_fixture  # noqa: PLC0415

    yield from llama_fixture(tiny_model)


def _daemon_scope(fixture_name: str, config: pytest.Config) -> DaemonScope:
    return settings_of(config).daemon_scope


@pytest.fixture(scope=_daemon_scope)
def _resilience_daemon_process(
    request: pytest.FixtureRequest, tiny_model: Path
) -> Iterator[DaemonProcess]:
    """The process behind ``daemon``; lives as long as ``resilience_daemon_scope`` says."""
    from pytest_resilience.plugin.fixtures import daemon_process_fixture  # noqa: PLC0415

    yield from daemon_process_fixture(request, tiny_model)


@pytest.fixture
def daemon(
    request: pytest.FixtureRequest, _resilience_daemon_process: DaemonProcess
) -> Iterator[DaemonProcess]:
    """A running :class:`DaemonProcess` on loopback with the tiny model, writing to the test's
    journal. Stopped at teardown, or shared by the session (``resilience_daemon_scope``);
    a shared one is running at the start of every test, whatever the test before did to it."""
    from pytest_resilience.plugin.fixtures import daemon_fixture  # noqa: PLC0415

    yield from daemon_fixture(request, _resilience_daemon_process)


@pytest.fixture
def resilient_client(
    request: pytest.FixtureRequest, daemon: DaemonProcess, tiny_model: Path
) -> Iterator[ResilientClient]:
    """A :class:`ResilientClient`: the ``daemon`` first, the tiny model in process after."""
    from pytest_resilience.plugin.fixtures import resilient_fixture  # noqa: PLC0415

    yield from resilient_fixture(request, daemon, tiny_model)


class LeakCheckPlugin:
    """Registered only with the leak check on: an autouse fixture around every test."""

    @pytest.fixture(autouse=True)
    def _resilience_leak_check(self, request: pytest.FixtureRequest) -> Iterator[None]:
        if request.node.get_closest_marker("no_leak_check") is not None:
            yield
            return
        from pytest_resilience.plugin.fixtures import leak_check_fixture  # noqa: PLC0415

        yield from (None for _ in leak_check_fixture(request))
