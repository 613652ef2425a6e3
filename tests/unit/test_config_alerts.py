"""Alerts configured in a policy file reach the application's callbacks: ``on_alert=`` of
``load_policy``, ``policy_from_mapping`` and ``ResilientClient.from_policy``."""

from __future__ import annotations

import socket
import textwrap
from typing import TYPE_CHECKING

import pytest

from pytest_resilience.backends.daemon import DaemonBackend
from pytest_resilience.backends.resilient import ResilientClient
from pytest_resilience.core.breaker import State
from pytest_resilience.core.config import load_policy, policy_from_mapping
from pytest_resilience.core.errors import DaemonUnavailable
from pytest_resilience.core.events import AlertFired

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_resilience.backends.base import Backend, GenerationParams
    from pytest_resilience.core.alerts import Alert
    from pytest_resilience.core.clock import VirtualClock
    from pytest_resilience.core.journal import Journal

POLICY = """
[breakers.daemon]
on = ["DaemonUnavailable"]
failures = 2
recovery = "1m"

[alerts]
cooldown = "5m"

[[alerts.rules]]
rule = "breaker_open"
"""


def write(folder: Path, text: str, name: str = "policy.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


class _Direct:
    """The in-process backend: answers at once."""

    name = "direct"

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str:
        return f"direct: {prompt}"

    def close(self) -> None:
        pass


@pytest.fixture
def refused_url() -> str:
    """A local port nothing listens on: the daemon's connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_alert_of_the_policy_file_reaches_the_clients_callback(
    tmp_path: Path, clock: VirtualClock, journal: Journal, refused_url: str
) -> None:
    path = write(tmp_path, POLICY)
    got: list[Alert] = []

    def direct() -> Backend:
        return _Direct()  # type: ignore[return-value]

    with (
        DaemonBackend(refused_url, clock=clock) as daemon,
        ResilientClient.from_policy(
            path, daemon, direct, clock=clock, journal=journal, on_alert=got.append
        ) as client,
    ):
        assert client.generate("hi") == "direct: hi"  # refused: answered in process
        assert got == []  # one failure: the breaker holds
        clock.advance(7.0)
        assert client.generate("hi") == "direct: hi"
        assert client.breaker.state is State.OPEN
    assert [(a.name, a.rule, a.about, a.time) for a in got] == [
        ("breaker_open", "breaker_open", "daemon", 7.0)  # the breaker the file names
    ]
    (fired,) = journal.events(AlertFired)
    assert fired.name == "breaker_open"


def test_every_callback_of_a_list_is_called(
    tmp_path: Path, clock: VirtualClock, journal: Journal
) -> None:
    first: list[str] = []
    second: list[float] = []
    policy = load_policy(
        write(tmp_path, POLICY),
        clock=clock,
        journal=journal,
        on_alert=[lambda a: first.append(a.name), lambda a: second.append(a.value)],
    )
    breaker = policy.breakers["daemon"]
    for _ in range(2):
        with pytest.raises(DaemonUnavailable):
            breaker.call(_refused)
    assert (first, second) == (["breaker_open"], [1.0])
    assert policy.alerts is not None
    policy.alerts.detach()


def test_a_policy_from_a_mapping_takes_them_too(clock: VirtualClock, journal: Journal) -> None:
    got: list[Alert] = []
    policy = policy_from_mapping(
        {
            "breakers": {"daemon": {"on": ["DaemonUnavailable"], "failures": 1}},
            "alerts": {"rules": [{"rule": "breaker_open", "name": "paged"}]},
        },
        clock=clock,
        journal=journal,
        on_alert=got.append,
    )
    with pytest.raises(DaemonUnavailable):
        policy.breakers["daemon"].call(_refused)
    assert [a.name for a in got] == ["paged"]
    assert policy.alerts is not None
    assert policy.alerts.on_alert == (got.append,)
    policy.alerts.detach()


def test_without_alerts_in_the_file_the_callback_is_never_called(
    tmp_path: Path, clock: VirtualClock, journal: Journal
) -> None:
    got: list[Alert] = []
    policy = load_policy(
        write(tmp_path, POLICY.partition("[alerts]")[0]),
        clock=clock,
        journal=journal,
        on_alert=got.append,
    )
    assert policy.alerts is None
    for _ in range(2):
        with pytest.raises(DaemonUnavailable):
            policy.breakers["daemon"].call(_refused)
    assert policy.breakers["daemon"].state is State.OPEN
    assert got == []


@pytest.mark.parametrize(
    ("on_alert", "message"),
    [
        ("page", "on_alert must be a callable or a list of callables, got str"),
        (3, "on_alert must be a callable or a list of callables, got int"),
        ([print, "page"], r"on_alert\[1\] must be callable, got str \('page'\)"),
    ],
)
def test_an_on_alert_that_is_not_callable_is_named(
    tmp_path: Path, clock: VirtualClock, on_alert: object, message: str
) -> None:
    path = write(tmp_path, POLICY)
    with pytest.raises(TypeError, match=message):
        load_policy(path, clock=clock, on_alert=on_alert)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=message):
        policy_from_mapping({}, clock=clock, on_alert=on_alert)  # type: ignore[arg-type]


def test_a_loaded_policy_refuses_callbacks_given_to_the_client(
    tmp_path: Path, clock: VirtualClock, refused_url: str
) -> None:
    loaded = load_policy(write(tmp_path, POLICY), clock=clock)
    with (
        DaemonBackend(refused_url, clock=clock) as daemon,
        pytest.raises(ValueError, match="pass them to load_policy"),
    ):
        ResilientClient.from_policy(loaded, daemon, _Direct(), on_alert=print)  # type: ignore[arg-type]


def _refused() -> str:
    raise DaemonUnavailable("connection refused")
