"""The injector's contract through its public API, on ``py:`` targets and on the daemon.*
sites with no server behind them: the defaults and where each argument goes, the error
texts, the repr, restart(), dump/save and replay with their arguments and overrides, and
what unreached() and reason() say for every kind of site."""

from __future__ import annotations

import importlib.util
import io
from typing import TYPE_CHECKING

import httpx
import pytest

import faults
from faults import Injector, SpecError, Target
from faults.injector import Unreached, installed
from faults.journal import load
from faults.proxy import FaultProxy
from faults.sites import aiohttp_client, urllib3_client
from faults.sites.daemon import CLIENTS, Unhookable
from faults.spec import Site
from pytest_resilience.core.clock import SystemClock, VirtualClock
from pytest_resilience.core.journal import Journal
from tests.unit import fault_targets as t

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from types import ModuleType

M = "py:tests.unit.fault_targets"
ANSWER = f"{M}:answer"
VECTOR = f"{M}:vector"
PORT = 8123  # the daemon.* sites' target: nothing listens there, and nothing is sent to it
DAEMON = f"http://127.0.0.1:{PORT}"
NOT_HOOKED_HINT = "a client that is not hooked needs the wire route (--daemon-route wire)"


@pytest.fixture(autouse=True)
def _reset_counts() -> Iterator[None]:
    t.CALLS.clear()
    yield
    t.CALLS.clear()


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    """A running fault proxy in front of the (absent) daemon."""
    with FaultProxy(("127.0.0.1", PORT)) as running:
        yield running


def _hooked() -> str:
    """The client families installed here, as the reasons list them (in hook order)."""
    return ", ".join(p for p, _ in CLIENTS if importlib.util.find_spec(p) is not None)


# ------------------------------------------------------------------ construction


@pytest.mark.parametrize("make", [faults.inject, Injector])
def test_the_defaults(make: type[Injector]) -> None:
    run = make(f"{ANSWER}=none")
    assert (run.seed, run.scope, run.route) == (0, "", "hooks")
    assert (run.daemon, run.proxy) == (None, None)
    assert isinstance(run.clock, SystemClock)
    assert len(run.journal) == 0
    assert not run.installed


@pytest.mark.parametrize("make", [faults.inject, Injector])
def test_every_argument_reaches_the_injector(make: type[Injector]) -> None:
    clock, journal, daemon = VirtualClock(), Journal(), Target(DAEMON)
    proxy = FaultProxy(("127.0.0.1", PORT))  # not started: only install() needs it running
    run = make(
        f"{ANSWER}=none",
        seed="s",
        scope="test_x",
        clock=clock,
        journal=journal,
        daemon=daemon,
        proxy=proxy,
        route="wire",
    )
    assert (run.seed, run.scope, run.route) == ("s", "test_x", "wire")
    assert run.clock is clock
    assert run.journal is journal
    assert run.daemon is daemon
    assert run.proxy is proxy


def test_a_daemon_url_becomes_a_target_and_a_bad_one_is_a_value_error() -> None:
    run = Injector("daemon.request=ratelimit", daemon=f"http://localhost:{PORT}/")
    assert isinstance(run.daemon, Target)
    assert (run.daemon.url, run.daemon.port) == (f"http://localhost:{PORT}", PORT)
    with pytest.raises(ValueError, match="not an http") as bad:
        Injector("daemon.request=ratelimit", daemon=f"127.0.0.1:{PORT}")
    assert str(bad.value) == f"not an http(s) URL with a host: '127.0.0.1:{PORT}'"


def test_the_wire_route_without_a_proxy_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="route='wire'") as bad:
        Injector(f"{ANSWER}=none", route="wire")
    assert str(bad.value) == "route='wire' needs the fault proxy in front of the daemon: proxy="


def _delay(seed: int, scope: str) -> float:
    """How long the first call of a jittered latency fault waits, on a fresh clock."""
    clock = VirtualClock()
    with faults.inject(f"{ANSWER}=latency(2s, 500ms)", seed=seed, scope=scope, clock=clock):
        assert t.answer("x") == "yes, x"
    return clock.now()


def test_latency_jitter_follows_the_seed_and_the_scope() -> None:
    first = _delay(1, "test_a")
    assert 1.5 <= first <= 2.5
    assert _delay(1, "test_a") == first
    assert _delay(2, "test_a") != first
    assert _delay(1, "test_b") != first


def test_the_sites_get_the_proxy_and_the_route(proxy: FaultProxy) -> None:
    spec = "daemon.request=raise(ConnectionError)"
    # On the wire route the proxy carries the faults, and a socket cannot raise.
    with pytest.raises(SpecError, match="cannot be injected on the wire"):
        Injector(spec, daemon=DAEMON, proxy=proxy, route="wire").install()
    assert installed() == []
    # On the hooks route the same spec installs in the clients.
    with Injector(spec, daemon=DAEMON, proxy=proxy) as run:
        assert installed() == [run]
    unstarted = FaultProxy(("127.0.0.1", PORT))
    with pytest.raises(ValueError, match="the wire route needs a running FaultProxy"):
        Injector("daemon.request=ratelimit", proxy=unstarted, route="wire").install()


# ------------------------------------------------------------------ install, uninstall


def test_the_repr_names_spec_seed_and_state() -> None:
    run = Injector(f"{ANSWER}=2*none", seed=7)
    assert repr(run) == f"<Injector '{ANSWER}=2*none' seed=7 not installed>"
    with run:
        assert repr(run) == f"<Injector '{ANSWER}=2*none' seed=7 installed>"
        with pytest.raises(RuntimeError) as again:
            run.install()
        assert str(again.value) == f"{run!r} is already installed"
    with pytest.raises(RuntimeError) as twice:
        run.uninstall()
    assert str(twice.value) == f"{run!r} is not installed"


def test_unwinding_out_of_order_names_every_injection_still_above() -> None:
    a, b, c = (Injector(f"{M}:target_{i}=none") for i in range(3))
    a.install()
    b.install()
    c.install()
    try:
        with pytest.raises(RuntimeError) as bad:
            a.uninstall()
        assert str(bad.value) == (
            f"injections unwind in reverse order: uninstall {b!r}, {c!r} before {a!r}"
        )
        with pytest.raises(RuntimeError) as bad:
            b.uninstall()
        assert str(bad.value) == f"injections unwind in reverse order: uninstall {c!r} before {b!r}"
        assert installed() == [a, b, c]
        assert t.target_0() is None
    finally:
        c.uninstall()
        b.uninstall()
        a.uninstall()
    assert installed() == []
    assert [t.target_0(), t.target_1(), t.target_2()] == [0, 1, 2]


def test_an_unknown_site_is_a_key_error_naming_the_sites() -> None:
    run = Injector(f"{ANSWER}=none;{VECTOR}=none")
    with pytest.raises(KeyError) as bad:
        run.schedule(f"{M}:words")
    assert bad.value.args[0] == (
        f"{M}:words is not a site of this injection (its sites: {ANSWER}, {VECTOR})"
    )
    with pytest.raises(KeyError) as empty:
        Injector("").calls("llama.generate")
    assert empty.value.args[0] == (
        "llama.generate is not a site of this injection (its sites: none)"
    )
    assert run.schedule(Site.parse(ANSWER)) is run.schedules[Site.parse(ANSWER)]


# ------------------------------------------------------------------ restart


def test_restart_meets_the_same_faults_again_and_the_counts_go_on() -> None:
    run = faults.inject(f"{ANSWER}=50%none;{VECTOR}=@2none", seed=11, scope="test_restart")
    with run:
        first = [t.answer("x") is None for _ in range(30)]
        first_vector = [t.vector(1) is None for _ in range(3)]
        run.restart()
        again = [t.answer("x") is None for _ in range(30)]
        again_vector = [t.vector(1) is None for _ in range(3)]
    assert True in first
    assert False in first
    assert again == first
    assert again_vector == first_vector == [False, True, False]
    assert (run.calls(ANSWER), run.injected(ANSWER)) == (60, 2 * sum(first))
    assert [d.call for site, d in run.decisions if site == VECTOR] == [2, 2]


# ------------------------------------------------------------------ dump, save, replay


def _recorded(seed: int, scope: str) -> tuple[Injector, list[bool]]:
    run = faults.inject(f"{ANSWER}=50%none;{VECTOR}=@1none", seed=seed, scope=scope)
    with run:
        pattern = [t.answer("x") is None for _ in range(20)]
        assert t.vector(1) is None
    return run, pattern


def test_a_dumped_or_saved_run_replays_with_its_spec_seed_and_scope(tmp_path: Path) -> None:
    run, pattern = _recorded(5, "test_dump")
    stream = io.StringIO()
    run.dump(stream)
    run.save(tmp_path / "run.jsonl")
    for replayed in (
        Injector.replay(stream.getvalue().splitlines()),
        Injector.replay(tmp_path / "run.jsonl"),
    ):
        assert (str(replayed.spec), replayed.seed, replayed.scope) == (
            str(run.spec),
            5,
            "test_dump",
        )
        assert (replayed.route, replayed.daemon, replayed.proxy) == ("hooks", None, None)
        with replayed:
            assert [t.answer("x") is None for _ in range(20)] == pattern
            replayed.restart()  # a replay replays again from call 1
            assert [t.answer("x") is None for _ in range(20)] == pattern


def test_replay_passes_every_argument_on() -> None:
    run, _ = _recorded(5, "test_dump")
    stream = io.StringIO()
    run.dump(stream)
    lines = stream.getvalue().splitlines()
    clock, journal, daemon = VirtualClock(), Journal(), Target(DAEMON)
    proxy = FaultProxy(("127.0.0.1", PORT))  # not started: only install() needs it running
    replays = (
        Injector.replay(
            lines,
            seed=9,
            scope="test_other",
            clock=clock,
            journal=journal,
            daemon=daemon,
            proxy=proxy,
            route="wire",
        ),
        Injector.from_recording(
            load(lines),
            seed=9,
            scope="test_other",
            clock=clock,
            journal=journal,
            daemon=daemon,
            proxy=proxy,
            route="wire",
        ),
    )
    for replayed in replays:
        assert (replayed.seed, replayed.scope, replayed.route) == (9, "test_other", "wire")
        assert replayed.clock is clock
        assert replayed.journal is journal
        assert replayed.daemon is daemon
        assert replayed.proxy is proxy
    plain = Injector.from_recording(load(lines))
    assert (plain.seed, plain.scope, plain.route) == (5, "test_dump", "hooks")
    assert isinstance(plain.clock, SystemClock)


def test_overrides_replace_the_recorded_faults_of_their_sites_only() -> None:
    run = faults.inject(f"{ANSWER}=@1none->@2none;{VECTOR}=@1none")
    with run:
        assert [t.answer("x"), t.answer("x"), t.vector(1)] == [None, None, None]
    stream = io.StringIO()
    run.dump(stream)
    recording = load(stream.getvalue().splitlines())
    replayed = Injector.from_recording(recording, overrides=faults.parse(f"{ANSWER}=@3none"))
    assert str(replayed.spec) == f"{ANSWER}=@3none;{VECTOR}=@1none"
    with replayed:
        assert [t.answer("x") for _ in range(3)] == ["yes, x", "yes, x", None]  # afresh
        assert [t.vector(1) for _ in range(2)] == [None, [0.0]]  # replayed
    assert [(site, d.call) for site, d in replayed.decisions] == [(ANSWER, 3), (VECTOR, 1)]


# ------------------------------------------------------------------ unreached, reason


def test_unreached_lists_the_certain_faults_that_never_fired() -> None:
    spec = ";".join(
        [
            f"{M}:target_0=off",  # asks for nothing
            f"{M}:target_1=50%none",  # a chance, not a request
            f"{M}:target_2=@2none",  # called once: too few times
            f"{M}:target_3=none",  # fired
            f"{M}:target_4=50%none->@5none",  # never called
        ]
    )
    with faults.inject(spec) as run:
        for i in range(4):
            getattr(t, f"target_{i}")()
    assert run.unreached() == [
        Unreached(
            f"{M}:target_2",
            f"{M}:target_2 was called 1 time(s) but no fault fired; its fault waits for call 2",
        ),
        Unreached(f"{M}:target_4", f"{M}:target_4 was never called"),
    ]
    assert [str(u) for u in run.unreached()] == [u.reason for u in run.unreached()]


def test_the_reason_of_a_py_site_says_how_often_it_was_called() -> None:
    run = faults.inject(f"{ANSWER}=@5none->@9none;{VECTOR}=off;{M}:words=none")
    with run:
        t.answer("x")
        t.answer("x")
        for _ in range(3):
            t.vector(1)
    waits = f"{ANSWER} was called 2 time(s) but no fault fired; its fault waits for call 5"
    assert run.reason(ANSWER) == waits
    assert run.reason(Site.parse(ANSWER)) == waits
    assert run.reason(VECTOR) == f"{VECTOR} was called 3 time(s) but no fault fired"
    assert run.reason(f"{M}:words") == f"{M}:words was never called"


def test_the_reason_of_a_daemon_site_without_a_daemon() -> None:
    run = Injector("daemon.request=ratelimit")
    assert run.reason("daemon.request") == (
        "daemon.request has no daemon to act on: pass daemon= (a DaemonProcess, a Target "
        "or a base URL), use the `daemon` fixture, or set resilience_daemon_url"
    )


def test_the_reason_of_a_daemon_site_before_install() -> None:
    run = Injector("daemon.request=ratelimit", daemon=DAEMON)
    assert run.reason("daemon.request") == (
        f"daemon.request: no hooked client (none) sent a request to ?; {NOT_HOOKED_HINT}"
    )


def test_the_reason_of_a_daemon_site_nothing_was_sent_to() -> None:
    hooked = _hooked()
    assert hooked.startswith("httpx, ")  # more than one family: the list's separator shows
    with faults.inject(
        "daemon.request=ratelimit;daemon.stream=truncate(after=1)", daemon=DAEMON
    ) as run:
        pass
    assert run.reason("daemon.request") == (
        f"daemon.request: no hooked client ({hooked}) sent a request to 127.0.0.1:{PORT}; "
        f"{NOT_HOOKED_HINT}"
    )
    assert run.reason("daemon.stream") == (
        f"daemon.stream: no streamed (text/event-stream) answer from 127.0.0.1:{PORT} was read"
    )


def test_the_reason_names_the_proxy_in_front_of_the_daemon(proxy: FaultProxy) -> None:
    with faults.inject("daemon.request=ratelimit", daemon=DAEMON, proxy=proxy) as run:
        pass
    assert run.reason("daemon.request") == (
        f"daemon.request: no hooked client ({_hooked()}) sent a request to "
        f"127.0.0.1:{PORT}, 127.0.0.1:{proxy.port}; {NOT_HOOKED_HINT}"
    )


def test_the_reason_on_the_wire_route_is_the_proxy(proxy: FaultProxy) -> None:
    run = faults.inject(
        "daemon.request=ratelimit;daemon.stream=truncate(after=1)",
        daemon=DAEMON,
        proxy=proxy,
        route="wire",
    )
    with run:
        pass
    assert run.reason("daemon.request") == (
        f"daemon.request: no request went through the fault proxy at {proxy.url}; on the wire "
        "route the client must send to the proxy (daemon.base_url)"
    )
    assert run.reason("daemon.stream") == (
        "daemon.stream: no streamed (text/event-stream) answer went through the fault proxy "
        f"at {proxy.url}; on the wire route the client must send to the proxy (daemon.base_url)"
    )


def test_the_reason_names_the_three_servers_most_requests_went_to() -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(200)))
    with client, faults.inject("daemon.request=ratelimit", daemon=DAEMON) as run:
        for port, times in ((81, 1), (82, 4), (83, 2), (84, 3)):
            for _ in range(times):
                assert client.get(f"http://127.0.0.2:{port}/v1/models").status_code == 200
    assert run.calls("daemon.request") == 0
    assert run.reason("daemon.request") == (
        "daemon.request: requests went to other servers (127.0.0.2:82 x4, 127.0.0.2:84 x3, "
        f"127.0.0.2:83 x2), not to 127.0.0.1:{PORT}"
    )


def _unhookable(why: str) -> object:
    def hook(sites: object, package: ModuleType) -> list[object]:
        raise Unhookable(why)

    return hook


def test_the_reason_names_each_client_family_that_could_not_be_hooked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aiohttp_client, "hook", _unhookable("aiohttp is too old"))
    monkeypatch.setattr(urllib3_client, "hook", _unhookable("urllib3 is too new"))
    with faults.inject("daemon.request=ratelimit", daemon=DAEMON) as run:
        pass
    hooked = ", ".join(p for p in _hooked().split(", ") if p not in ("aiohttp", "urllib3"))
    assert run.reason("daemon.request") == (
        f"daemon.request: no hooked client ({hooked}) sent a request to 127.0.0.1:{PORT}"
        "; aiohttp is not hooked: aiohttp is too old; urllib3 is not hooked: urllib3 is too "
        f"new; {NOT_HOOKED_HINT}"
    )
