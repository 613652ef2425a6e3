"""The policy from one file: load_policy() builds each section's component on the given
clock and journal (asserted by what the component does on a virtual clock), keeps the
code's defaults for absent keys, and refuses a bad file with the file, the line, the
dotted key and what was expected, in TOML and in YAML."""

from __future__ import annotations

import itertools
import re
import socket
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_resilience.backends.daemon import DaemonBackend
from pytest_resilience.backends.resilient import ResilientClient
from pytest_resilience.core.backoff import Backoff
from pytest_resilience.core.breaker import CircuitBreaker, State
from pytest_resilience.core.cancel import current_scope
from pytest_resilience.core.config import (
    PolicyError,
    ResiliencePolicy,
    load_policy,
    policy_from_mapping,
)
from pytest_resilience.core.config_read import NamedExceptions, to_seconds
from pytest_resilience.core.degrade import DEFAULT_PROFILES, Level, Profile
from pytest_resilience.core.errors import (
    BackendError,
    CircuitOpenError,
    DaemonUnavailable,
    FallbackError,
    RetryError,
    ServerError,
    StreamStalled,
)
from pytest_resilience.core.events import AlertFired, DegradationChanged, FallbackUsed
from pytest_resilience.core.stream_base import StreamResult

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pytest_resilience.backends.base import Backend
    from pytest_resilience.core.journal import Journal
    from pytest_resilience.core.virtual_clock import VirtualClock

DOCS = Path(__file__).resolve().parents[2] / "docs"


class Flaky(Exception):
    """An application's own error, named in policies by its dotted name."""


FLAKY = f"{Flaky.__module__}.{Flaky.__qualname__}"


def write(folder: Path, text: str, name: str = "policy.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(folder: Path, text: str, clock: VirtualClock, **kwargs: Any) -> ResiliencePolicy:
    return load_policy(write(folder, text), clock=clock, **kwargs)


def error_of(folder: Path, text: str, name: str = "policy.toml", **kwargs: Any) -> str:
    """The message of the PolicyError that loading ``text`` raises, its path as ``name``."""
    path = write(folder, text, name)
    with pytest.raises(PolicyError) as raised:
        load_policy(path, **kwargs)
    return str(raised.value).replace(str(path), name)


@pytest.fixture
def forget() -> Iterator[Callable[[str], None]]:
    """``forget(name)``: the module ``name`` and its submodules are not imported now, and
    are forgotten again after the test (a test's own app modules must not leak into the
    next test, nor a page of the docs that names the same module)."""
    names: list[str] = []

    def drop() -> None:
        for loaded in list(sys.modules):
            if any(loaded == n or loaded.startswith(f"{n}.") for n in names):
                del sys.modules[loaded]

    def forget(name: str) -> None:
        names.append(name)
        drop()

    yield forget
    drop()


def state(breaker: CircuitBreaker) -> State:
    """The breaker's state (a call, so that each read is its own for the type checker)."""
    return breaker.state


def failing(exc: BaseException) -> Callable[..., Any]:
    def fail(*args: object, **kwargs: object) -> Any:
        raise exc

    return fail


# ------------------------------------------------------------------------ the example


def test_the_shipped_example_loads_and_each_part_does_what_it_says(
    tmp_path: Path,
    clock: VirtualClock,
    journal: Journal,
    monkeypatch: pytest.MonkeyPatch,
    forget: Callable[[str], None],
) -> None:
    forget("myapp")
    policy = load_policy(
        DOCS / "policy.toml",
        clock=clock,
        journal=journal,
        steps={"daemon": failing(DaemonUnavailable("refused"))},
    )
    assert "myapp" not in sys.modules  # the path step is imported at its first call only
    assert policy.fallback is not None
    assert policy.fallback.steps == ("daemon", "direct", "cache", "static")
    # the app's module, importable now: the chain's path step finds it at its first call
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "llm.py").write_text(
        "from pytest_resilience.core.errors import BackendError\n"
        "ANSWERS = []\n"
        "def answer_in_process(prompt):\n"
        "    if not ANSWERS:\n"
        "        raise BackendError('no model file')\n"
        "    return ANSWERS.pop()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert policy.fallback("hi") == "The model is resting; try again in a minute."
    answers: list[str] = sys.modules["myapp.llm"].ANSWERS
    answers.append("4")
    assert policy.fallback("hi") == "4"  # direct answered, and the cache keeps it
    assert policy.fallback("hi") == "4"  # direct fails again: the cache answers
    used = [e.step for e in journal.events() if isinstance(e, FallbackUsed)]
    assert used == ["static", "direct", "cache"]

    assert policy.retry is not None
    calls: list[float] = []

    def down() -> None:
        calls.append(clock.now())
        raise ServerError(500)

    with pytest.raises(RetryError):
        policy.retry.call(down)
    assert len(calls) == 3
    assert all(0 <= b - a <= 5.0 for a, b in itertools.pairwise(calls))

    daemon = policy.breakers["daemon"]
    for _ in range(3):
        with pytest.raises(DaemonUnavailable):
            daemon.call(failing(DaemonUnavailable("refused")))
    with pytest.raises(CircuitOpenError):
        daemon.call(lambda: "never")
    clock.advance(10.0)
    assert daemon.call(lambda: "back") == "back"
    assert state(daemon) is State.CLOSED
    assert set(policy.breakers) == {"daemon", "embeddings"}
    assert policy.client_arguments()["breaker"] is daemon
    assert policy.client_arguments()["timeout"] == 20.0
    assert policy.alerts is not None
    assert [r.name for r in policy.alerts.rules] == [
        "consecutive_failures",
        "error_rate",
        "breaker_open",
    ]
    # attached to the journal: the breaker that opened above was alerted
    assert [e.name for e in journal.events() if isinstance(e, AlertFired)] == ["breaker_open"]
    policy.alerts.detach()


def test_the_docs_show_the_shipped_example_as_it_is() -> None:
    page = (DOCS / "core.md").read_text(encoding="utf-8")
    shown = re.search(r"<!-- file: policy.toml -->\n```toml\n(.*?)```", page, re.DOTALL)
    assert shown is not None, "core.md shows policy.toml"
    assert shown.group(1) == (DOCS / "policy.toml").read_text(encoding="utf-8")
    assert "(policy.toml)" in page  # and links to the file itself


# ----------------------------------------------------------------------------- defaults


def test_an_empty_file_describes_nothing_and_the_client_keeps_its_defaults(
    tmp_path: Path, clock: VirtualClock
) -> None:
    policy = load(tmp_path, "", clock)
    assert (policy.retry, policy.fallback, policy.degrader, policy.alerts) == (None,) * 4
    assert (policy.cache, policy.guard, dict(policy.breakers)) == (None, None, {})
    assert policy.client_arguments() == {"clock": clock, "journal": None}


def test_absent_keys_keep_the_codes_defaults(tmp_path: Path, clock: VirtualClock) -> None:
    policy = load(
        tmp_path,
        """
        [retry]
        on = ["ConnectionError"]
        [breakers.model]
        on = ["ConnectionError"]
        [degrade]
        [stream]
        [cache]
        """,
        clock,
    )
    assert policy.retry is not None
    assert policy.retry.backoff == Backoff()
    tries: list[float] = []

    def refused() -> None:
        tries.append(clock.now())
        raise ConnectionError("refused")

    with pytest.raises(RetryError):
        policy.retry.call(refused)
    assert len(tries) == 3  # Retry's default attempts
    breaker = policy.breakers["model"]
    for _ in range(4):
        with pytest.raises(ConnectionError):
            breaker.call(refused)
    assert state(breaker) is State.CLOSED  # five in a row trip it, not four
    with pytest.raises(ConnectionError):
        breaker.call(refused)
    assert state(breaker) is State.OPEN
    clock.advance(29.9)
    assert state(breaker) is State.OPEN
    clock.advance(0.1)
    assert state(breaker) is State.HALF_OPEN  # after the default 30 s
    assert policy.degrader is not None
    assert policy.degrader.profiles == dict(DEFAULT_PROFILES)
    assert (policy.degrader.lowest, policy.degrader.models) == (Level.STATIC, ())
    for _ in range(4):
        policy.degrader.record(False)
    assert policy.degrader.level is Level.FULL  # the default min_calls is 5
    assert policy.degrader.record(False) is Level.REDUCED
    assert policy.guard is not None
    assert policy.guard.collect(iter(["a", "b"])) == StreamResult(
        "ab", True, "complete", first_token=0.0
    )
    assert policy.cache is not None
    assert (policy.cache.max_entries, policy.cache.max_bytes, policy.cache.max_age) == (
        1024,
        16 * 2**20,
        None,
    )


# ----------------------------------------------------------------------------- sections


def test_retry_waits_as_its_backoff_says_and_retries_only_what_on_names(
    tmp_path: Path, clock: VirtualClock, journal: Journal
) -> None:
    policy = load(
        tmp_path,
        f"""
        [retry]
        on = ["ConnectionError", "{FLAKY}"]
        attempts = 4
        base = "250ms"
        factor = 3
        cap = "1s"
        jitter = "none"
        name = "ask"
        """,
        clock,
        journal=journal,
    )
    retry = policy.retry
    assert retry is not None
    assert isinstance(retry.on, NamedExceptions)
    tries: list[float] = []

    def flaky() -> str:
        tries.append(clock.now())
        if len(tries) < 4:
            raise Flaky("again")
        return "ok"

    assert retry.call(flaky) == "ok"
    assert tries == [0.0, 0.25, 1.0, 2.0]  # 0.25, 0.75, then capped at 1 s
    assert {e.source for e in journal.events()} == {"ask"}
    with pytest.raises(ValueError, match="not retried"):
        retry.call(failing(ValueError("not retried")))
    assert len(tries) == 4


def test_retry_budget_on_result_reraise_and_the_retryable_shorthand(
    tmp_path: Path, clock: VirtualClock
) -> None:
    policy = load(
        tmp_path,
        """
        [retry]
        on = "retryable"
        attempts = 10
        base = "2s"
        jitter = "none"
        factor = 1
        budget = "5s"
        on_result = "empty"
        reraise = true
        """,
        clock,
    )
    retry = policy.retry
    assert retry is not None
    answers = iter(["", " ", "text"])
    assert retry.call(lambda: next(answers)) == "text"  # empty answers retried
    started = clock.now()
    with pytest.raises(DaemonUnavailable):  # reraise: the error itself, not RetryError
        retry.call(failing(DaemonUnavailable("refused")))  # classify: retryable
    assert clock.now() - started == 4.0  # a third wait would pass the 5 s budget
    with pytest.raises(ValueError, match="bug"):
        retry.call(failing(ValueError("bug")))  # not retryable


def test_breakers_by_name_with_their_own_trip_policies_and_recovery(
    tmp_path: Path, clock: VirtualClock
) -> None:
    policy = load(
        tmp_path,
        f"""
        [breakers.daemon]
        on = ["DaemonUnavailable"]
        exclude = ["{FLAKY}"]
        failures = 2
        recovery = "10s"
        probes = 1
        successes = 2

        [breakers.embed]
        on = ["ConnectionError"]
        trip = "count"
        size = 4
        rate = 0.5
        min_calls = 4

        [breakers.slow]
        on = ["ConnectionError"]
        trip = "time"
        window = "30s"
        rate = 1
        min_calls = 2
        slow_after = "1s"
        """,
        clock,
    )
    daemon = policy.breakers["daemon"]
    for _ in range(3):
        with pytest.raises(Flaky):
            daemon.call(failing(Flaky("excluded")))
    assert state(daemon) is State.CLOSED
    for _ in range(2):
        with pytest.raises(DaemonUnavailable):
            daemon.call(failing(DaemonUnavailable("down")))
    assert state(daemon) is State.OPEN
    clock.advance(10.0)
    daemon.call(lambda: None)
    assert state(daemon) is State.HALF_OPEN  # two successful probes close it
    daemon.call(lambda: None)
    assert state(daemon) is State.CLOSED

    embed = policy.breakers["embed"]
    embed.call(lambda: None)
    with pytest.raises(ConnectionError):
        embed.call(failing(ConnectionError()))
    embed.call(lambda: None)
    assert state(embed) is State.CLOSED
    with pytest.raises(ConnectionError):
        embed.call(failing(ConnectionError()))
    assert state(embed) is State.OPEN  # 2 of the last 4 calls

    slow = policy.breakers["slow"]
    slow.call(lambda: clock.sleep(1.5))  # slower than slow_after: a failure
    assert state(slow) is State.CLOSED
    clock.advance(30.0)  # out of the window
    slow.call(lambda: clock.sleep(2.0))
    assert state(slow) is State.CLOSED
    slow.call(lambda: clock.sleep(2.0))
    assert state(slow) is State.OPEN


def test_fallback_steps_from_the_callers_mapping_paths_static_and_cache(
    tmp_path: Path, clock: VirtualClock, journal: Journal
) -> None:
    policy = load(
        tmp_path,
        """
        [fallback]
        name = "answer"
        on = ["BackendError"]
        reject = "empty"
        [[fallback.steps]]
        call = "daemon"
        [[fallback.steps]]
        call = "os.path:basename"
        on = ["TypeError"]
        [[fallback.steps]]
        cache = true
        [[fallback.steps]]
        name = "resting"
        static = "Resting."
        [cache]
        """,
        clock,
        journal=journal,
        steps={"daemon": failing(DaemonUnavailable("down"))},
    )
    chain = policy.fallback
    assert chain is not None
    assert (chain.name, chain.steps) == ("answer", ("daemon", "basename", "cache", "resting"))
    assert chain("/a/b") == "b"  # basename answered, and the cache keeps it
    assert chain(None) == "Resting."  # basename(None): TypeError, its own on; cache misses
    assert chain("/a/") == "Resting."  # basename gives "": rejected; nothing cached for it
    assert [e.step for e in journal.events() if isinstance(e, FallbackUsed)] == [
        "basename",
        "resting",
        "resting",
    ]


def test_a_path_step_is_imported_at_its_first_call_unless_the_chain_says_at_load(
    tmp_path: Path,
    clock: VirtualClock,
    monkeypatch: pytest.MonkeyPatch,
    forget: Callable[[str], None],
) -> None:
    (tmp_path / "policy_steps_app.py").write_text("def answer(prompt):\n    return 'here'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    forget("policy_steps_app")
    text = """
        [fallback]
        on = ["BackendError"]
        {import_line}
        [[fallback.steps]]
        call = "policy_steps_app:answer"
        """
    lazy = load(tmp_path, text.format(import_line=""), clock)
    assert "policy_steps_app" not in sys.modules
    assert lazy.fallback is not None
    assert lazy.fallback("q") == "here"
    assert "policy_steps_app" in sys.modules
    del sys.modules["policy_steps_app"]
    load(tmp_path, text.format(import_line='import = "at_load"'), clock)
    assert "policy_steps_app" in sys.modules

    missing = load(tmp_path, text.replace(":answer", ":gone").format(import_line=""), clock)
    assert missing.fallback is not None
    with pytest.raises(ImportError) as raised:
        missing.fallback("q")
    assert str(raised.value) == (
        f"{tmp_path / 'policy.toml'}: fallback step 'policy_steps_app:gone': cannot import "
        "'policy_steps_app:gone': module 'policy_steps_app' has no attribute 'gone'"
    )


def test_degrade_levels_thresholds_hysteresis_and_profiles(
    tmp_path: Path, clock: VirtualClock, journal: Journal
) -> None:
    policy = load(
        tmp_path,
        """
        [degrade]
        name = "llm"
        models = ["big", "small"]
        lowest = "minimal"
        window = "1m"
        min_calls = 2
        dwell = "30s"
        [degrade.degrade_at]
        latency = "4s"
        [degrade.restore_below]
        error_rate = 0.25
        [degrade.profiles.reduced]
        token_scale = 0.1
        """,
        clock,
        journal=journal,
    )
    degrader = policy.degrader
    assert degrader is not None
    assert degrader.policy.degrade_at.error_rate == 0.5  # the default, kept
    assert degrader.policy.restore_below.latency == 3.0
    degrader.record(True, 4.0)
    assert degrader.record(True, 4.0) is Level.REDUCED  # p90 latency reaches 4 s
    assert degrader.model == "small"
    assert degrader.adjust({"max_tokens": 100}) == {"max_tokens": 10}
    assert degrader.profile == Profile(token_scale=0.1, model=1, temperature=0.7, tools=3)
    degrader.record(False)
    assert degrader.record(False) is Level.MINIMAL
    clock.advance(29.0)
    degrader.record(True, 0.1)
    assert degrader.record(True, 0.1) is Level.MINIMAL  # not 30 s at this level yet
    clock.advance(1.0)
    degrader.record(True, 0.1)
    # 1 failure in 4 is at restore_below's 0.25 (the default 0.1 would not step up)
    assert degrader.record(False, 0.1) is Level.REDUCED
    for _ in range(3):
        degrader.record(False)
    assert degrader.record(False) is Level.MINIMAL  # the lowest it may go
    assert [e.to_level for e in journal.events(DegradationChanged)] == [
        "reduced",
        "minimal",
        "reduced",
        "minimal",
    ]
    assert {e.source for e in journal.events()} == {"llm"}


def test_alerts_thresholds_and_cooldowns_on_the_journal(
    tmp_path: Path, clock: VirtualClock, journal: Journal
) -> None:
    policy = load(
        tmp_path,
        """
        [retry]
        on = ["ConnectionError"]
        attempts = 2
        base = 0
        name = "ask"
        [alerts]
        cooldown = "2m"
        [[alerts.rules]]
        rule = "consecutive_failures"
        threshold = 4
        [[alerts.rules]]
        rule = "error_rate"
        name = "busy"
        errors = 3
        window = "10s"
        cooldown = "5s"
        """,
        clock,
        journal=journal,
    )
    alerts, retry = policy.alerts, policy.retry
    assert alerts is not None
    assert retry is not None
    with pytest.raises(RetryError):
        retry.call(failing(ConnectionError()))
    assert alerts.fired == []
    with pytest.raises(RetryError):
        retry.call(failing(ConnectionError()))
    assert [a.name for a in alerts.fired] == ["busy", "consecutive_failures"]
    clock.advance(5.0)  # busy's own cooldown is over, the streak's (the section's) is not
    with pytest.raises(RetryError):
        retry.call(failing(ConnectionError()))
    assert [a.name for a in alerts.fired] == ["busy", "consecutive_failures", "busy"]
    assert alerts.suppressed == {"busy": 2, "consecutive_failures": 2}
    clock.advance(60.0)  # past the default 60 s, within the section's 2 minutes
    with pytest.raises(RetryError):
        retry.call(failing(ConnectionError()))
    assert [a.name for a in alerts.fired] == ["busy", "consecutive_failures", "busy"]
    assert alerts.suppressed == {"busy": 2, "consecutive_failures": 4}
    alerts.detach()


def test_cache_bounds_age_and_its_file_next_to_the_policy(
    tmp_path: Path, clock: VirtualClock
) -> None:
    text = """
        [cache]
        name = "answers"
        max_entries = 2
        max_bytes = 100
        max_age = "1m"
        path = "answers.jsonl"
        """
    cache = load(tmp_path, text, clock).cache
    assert cache is not None
    assert cache.put("a", "1")
    assert cache.put("b", "2")
    assert cache.put("c", "3")
    assert cache.get("a") is None  # evicted: two entries at most
    assert not cache.put("d", "x" * 100)  # over max_bytes
    assert cache.save() == tmp_path / "answers.jsonl"
    again = load(tmp_path, text, clock).cache
    assert again is not None
    assert again.get("c") == "3"
    clock.advance(60.0)
    assert again.get("b") is None  # older than max_age


def test_stream_guard_deadlines_and_caps(tmp_path: Path, clock: VirtualClock) -> None:
    policy = load(
        tmp_path,
        """
        [stream]
        first_token = "2s"
        idle = "500ms"
        max_chars = 3
        on_stall = "raise"
        """,
        clock,
    )
    guard = policy.guard
    assert guard is not None
    assert guard.collect(iter(["ab", "cd"])).reason == "capped"

    def slow(first: float) -> Iterator[str]:
        scope = current_scope()  # a cooperative source: it waits in the guard's scope
        assert scope is not None
        scope.wait(first)
        yield "ab"
        scope.wait(0.4)
        yield "c"

    assert guard.collect(slow(1.9)) == StreamResult("abc", True, "complete", first_token=1.9)
    with pytest.raises(StreamStalled) as stalled:
        guard.collect(slow(2.5))
    assert (stalled.value.which, stalled.value.waited) == ("first_token", 2.0)


class _Direct:
    """The in-process side: answers every prompt."""

    def generate(self, prompt: str, params: object = None) -> str:
        return f"direct: {prompt}"

    def close(self) -> None:
        pass


@pytest.fixture
def refused_url() -> str:
    """The URL of a local port where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_a_resilient_client_from_the_policy_file(
    tmp_path: Path, clock: VirtualClock, journal: Journal, refused_url: str
) -> None:
    path = write(
        tmp_path,
        """
        [retry]
        on = ["ServerError"]
        attempts = 5
        [breakers.model]
        on = ["DaemonUnavailable"]
        failures = 1
        recovery = "1m"
        [client]
        name = "chat"
        breaker = "model"
        timeout = "none"
        policy = "never_fail"
        static = "Resting."
        """,
    )

    def direct() -> Backend:
        return _Direct()  # type: ignore[return-value]

    with (
        DaemonBackend(refused_url, clock=clock) as daemon,
        ResilientClient.from_policy(path, daemon, direct, clock=clock, journal=journal) as client,
    ):
        assert (client.name, client.timeout, client.policy, client.static) == (
            "chat",
            None,
            "never_fail",
            "Resting.",
        )
        assert client.retry.attempts == 5
        assert client.generate("hi") == "direct: hi"  # refused: answered in process
        assert client.breaker.name == "model"
        assert client.breaker.state is State.OPEN  # one failure trips it
        assert client.clock is clock
        assert client.guard.first_token is None  # no [stream]: the client's default guard
    with (
        DaemonBackend(refused_url, clock=clock) as daemon,
        ResilientClient.from_policy(write(tmp_path, "", "empty.toml"), daemon, direct) as plain,
    ):
        assert (plain.name, plain.timeout, plain.retry.attempts) == ("resilient", 60.0, 2)
        assert plain.breaker.name == "resilient.daemon"
    loaded = load_policy(path, clock=clock)
    with pytest.raises(ValueError, match="brings its own clock and journal"):
        ResilientClient.from_policy(loaded, daemon, direct, journal=journal)


def test_a_breaker_named_daemon_is_the_clients_when_client_names_none(
    tmp_path: Path, clock: VirtualClock
) -> None:
    policy = load(tmp_path, '[breakers.daemon]\non = ["ServerError"]\n', clock)
    assert policy.client_arguments()["breaker"] is policy.breakers["daemon"]
    assert "breaker" not in load(tmp_path, '[breakers.x]\non = ["ServerError"]\n', clock).client


def test_services_register_every_breaker(tmp_path: Path, clock: VirtualClock) -> None:
    policy = load(
        tmp_path,
        '[breakers.a]\non = ["ServerError"]\nfailures = 1\n[breakers.b]\non = ["ServerError"]\n',
        clock,
    )
    with pytest.raises(ServerError):
        policy.breakers["a"].call(failing(ServerError(500)))
    report = policy.services().status()
    assert report["status"] == "unhealthy"
    assert sorted(report["services"]) == ["a", "b"]


def test_durations_read_as_the_fault_grammar_writes_them() -> None:
    assert [to_seconds(t) for t in ("250ms", "2s", "1m", "1h", "1.5s", "500ms")] == [
        0.25,
        2.0,
        60.0,
        3600.0,
        1.5,
        0.5,
    ]
    assert [to_seconds(t) for t in ("2", "2x", "s", "-1s", "1e3s", "")] == [None] * 6


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[retry]\non = ['OSError']\natempts = 3\n",
            "3: retry.atempts: unknown key (did you mean 'attempts'?)",
        ),
        ("[breaker.x]\non = ['OSError']\n", "1: breaker: unknown key (did you mean 'breakers'?)"),
        (
            "zzz = 1\n",
            "1: zzz: unknown key (expected one of: alerts, breakers, cache, client, degrade, "
            "fallback, retry, stream, version)",
        ),
        (
            "[retry]\non = ['OSError']\n\nattempts = '3'\n",
            "4: retry.attempts: expected an integer >= 1, got a string ('3')",
        ),
        (
            "[retry]\non = ['OSError']\nattempts = 0\n",
            "3: retry.attempts: expected an integer >= 1, got an integer (0)",
        ),
        (
            "[retry]\non = ['OSError']\nbase = '2x'\n",
            '3: retry.base: expected a duration (seconds, or text such as "250ms", "2s", "1m"), '
            "got a string ('2x')",
        ),
        (
            "[retry]\non = ['OSError']\ncap = -1\n",
            '3: retry.cap: expected a duration (seconds, or text such as "250ms", "2s", "1m"), '
            "got -1, which is negative",
        ),
        (
            "[retry]\non = ['OSError']\nbudget = 0\n",
            '3: retry.budget: expected a duration (seconds, or text such as "250ms", "2s", "1m") '
            "> 0, got an integer (0)",
        ),
        (
            "[retry]\non = ['OSError']\njitter = 'ful'\n",
            "3: retry.jitter: expected one of 'none', 'full', 'equal', 'decorrelated', "
            "'proportional', got 'ful' (did you mean 'full'?)",
        ),
        (
            "[retry]\non = ['OSError']\nreraise = 'yes'\n",
            "3: retry.reraise: expected true or false, got a string ('yes')",
        ),
        (
            "[retry]\nattempts = 2\n",
            "1: retry: required key 'on' missing in [retry] (what is worth another try)",
        ),
        (
            "[retry]\non = [\n  'OSError',\n  'ConectionError',\n]\n",
            "4: retry.on[2]: unknown exception 'ConectionError': a builtin exception, a "
            "pytest_resilience error, or a dotted name such as 'httpx.ConnectError' (did you mean "
            "'ConnectionError'?)",
        ),
        (
            "[retry]\non = ['my..Error']\n",
            "2: retry.on[1]: 'my..Error' is not an exception name: a dotted name "
            "(pkg.module.Name) has an empty part",
        ),
        ("[retry]\non = []\n", "2: retry.on: needs at least one exception name"),
        (
            "[retry]\non = 'OSError'\n",
            "2: retry.on: expected a list of exception names, got a string ('OSError')",
        ),
        ("retry = 3\n", "1: retry: expected a table, got an integer (3)"),
        (
            "[breakers.d]\non = ['OSError']\nsize = 3\n",
            "3: breakers.d.size: 'size' is for trip = 'count', and this breaker's trip is "
            "'consecutive'",
        ),
        (
            "[breakers.d]\non = ['OSError']\ntrip = 'count'\nrate = 1.5\n",
            "4: breakers.d.rate: expected a number > 0 and <= 1, got a number (1.5)",
        ),
        (
            "[breakers.d]\non = ['OSError']\ntrip = 'count'\nsize = 2\nmin_calls = 3\n",
            "1: breakers.d: CountWindow needs 1 <= min_calls <= size, got 3",
        ),
        (
            "[degrade.restore_below]\nerror_rate = 0.6\n",
            "1: degrade: DegradePolicy needs restore_below lower than degrade_at in both error "
            "rate and latency (hysteresis), got Limits(error_rate=0.6, latency=3.0) and "
            "Limits(error_rate=0.5, latency=10.0)",
        ),
        (
            "[degrade]\nlowest = 'full'\n",
            "2: degrade.lowest: expected one of 'reduced', 'minimal', 'cached_only', 'static', "
            "got 'full'",
        ),
        (
            "[degrade.profiles.redcued]\ntoken_scale = 0.5\n",
            "1: degrade.profiles.redcued: unknown key (did you mean 'reduced'?)",
        ),
        (
            "[fallback]\non = ['OSError']\n[[fallback.steps]]\ncall = 'daemn'\n",
            "4: fallback.steps[1].call: no step function named 'daemn' (did you mean 'daemon'?): "
            "the caller's steps are 'daemon'; or write a 'module:function' path",
        ),
        (
            "[fallback]\non = ['OSError']\n[[fallback.steps]]\ncall = "
            "'daemon'\n[[fallback.steps]]\nname = 'daemon'\nstatic = 'x'\n",
            "6: fallback.steps[2].name: a second step named 'daemon' (the first is step 1); give "
            "each step its own name",
        ),
        (
            "[fallback]\non = ['OSError']\n[[fallback.steps]]\ncall = 'daemon'\nstatic = 'x'\n",
            "3: fallback.steps[1]: a step has one of 'call', 'cache' or 'static', got 'call' and "
            "'static'",
        ),
        (
            "[fallback]\non = ['OSError']\n[[fallback.steps]]\ncache = true\n",
            "4: fallback.steps[1].cache: a cache step answers from [cache]: the file has none",
        ),
        (
            "[fallback]\non = ['OSError']\n[[fallback.steps]]\ncall = 'a.b:'\n",
            "4: fallback.steps[1].call: 'a.b:' is not an import path: expected "
            "'package.module:function' (or 'module:Class.method')",
        ),
        (
            "[fallback]\non = ['OSError']\nimport = 'at_load'\n[[fallback.steps]]\ncall = "
            "'no_such_module_here:f'\n",
            "5: fallback.steps[1].call: cannot import 'no_such_module_here:f': No module named "
            "'no_such_module_here'",
        ),
        (
            "[fallback]\non = ['OSError']\n",
            "1: fallback: required key 'steps' missing in [fallback] ([[fallback.steps]])",
        ),
        (
            "[alerts]\n[[alerts.rules]]\nrule = 'breaker_open'\nthreshold = 2\n",
            "4: alerts.rules[1].threshold: 'threshold' is for rule = 'consecutive_failures', and "
            "this rule is 'breaker_open'",
        ),
        (
            "[alerts]\n[[alerts.rules]]\nrule = 'error_rate'\nerrors = 3\n",
            "2: alerts.rules[1]: required key 'window' missing in [alerts.rules[1]] (seconds)",
        ),
        (
            "[cache]\nmax_entries = 1.5\n",
            "2: cache.max_entries: expected an integer >= 1, got a number (1.5)",
        ),
        (
            "[stream]\nfirst_token = true\n",
            '2: stream.first_token: expected a duration (seconds, or text such as "250ms", "2s", '
            '"1m"), got a boolean (true)',
        ),
        (
            "[client]\npolicy = 'never-fail'\n",
            "2: client.policy: expected one of 'raise', 'never_fail', got 'never-fail' (did you "
            "mean 'never_fail'?)",
        ),
        (
            "[breakers.model]\non = ['OSError']\n[client]\nbreaker = 'modle'\n",
            "4: client.breaker: no breaker named 'modle' (did you mean 'model'?) (the file's "
            "breakers: 'model')",
        ),
        ("version = 2\n", "1: version: unknown version 2 (this reader knows 1)"),
    ],
)
def test_a_bad_toml_policy_is_refused_at_its_line_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    steps = {"daemon": str.upper}
    assert error_of(tmp_path, text, steps=steps) == f"policy.toml:{message}"


def test_a_file_that_is_not_toml_gets_tomllibs_position(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[retry]\non = ['OSError']\nattempts = = 3\n")
    assert message == (
        "policy.toml:3: retry.attempts: invalid TOML: Invalid value (at line 3, column 12)"
    )


def test_a_missing_file_an_unknown_suffix_and_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    gone = tmp_path / "gone.toml"
    with pytest.raises(PolicyError) as raised:
        load_policy(gone)
    assert str(raised.value) == (
        f"{gone}:1: cannot read the policy file: [Errno 2] No such file or directory: '{gone}'"
    )
    assert error_of(tmp_path, "{}", "policy.json") == (
        "policy.json:1: unknown policy file type '.json': .toml, .yaml or .yml"
    )
    (tmp_path / "latin.toml").write_bytes(b"[client]\nstatic = 'caf\xe9'\n")
    with pytest.raises(PolicyError) as raised:
        load_policy(tmp_path / "latin.toml")
    assert raised.value.line == 2
    assert raised.value.key == "client.static"
    assert "the file is not UTF-8: byte 0xe9 at column 14" in raised.value.message


def test_a_policy_from_a_mapping_names_its_source_and_has_no_line(clock: VirtualClock) -> None:
    with pytest.raises(PolicyError) as raised:
        policy_from_mapping({"retry": {"on": ["OSError"], "atempts": 1}}, source="settings")
    assert str(raised.value) == "settings: retry.atempts: unknown key (did you mean 'attempts'?)"
    policy = policy_from_mapping({"stream": {"idle": "1s"}}, clock=clock)
    assert policy.guard is not None
    assert policy.guard.idle == 1.0
    lines: dict[tuple[str | int, ...], int] = {("stream",): 7, ("stream", "idle"): 8}
    with pytest.raises(PolicyError, match=r"^settings:8: stream\.idle: expected"):
        policy_from_mapping({"stream": {"idle": "x"}}, source="settings", lines=lines)


# -------------------------------------------------------------------------------- YAML


def test_a_yaml_policy_builds_the_same_components(tmp_path: Path, clock: VirtualClock) -> None:
    path = write(
        tmp_path,
        """
        retry:
          on: [ConnectionError]   # "on" stays a key, not YAML 1.1's true
          attempts: 2
          base: 1s
          jitter: none
        breakers:
          daemon:
            on: [DaemonUnavailable]
            failures: 1
        """,
        "policy.yaml",
    )
    policy = load_policy(path, clock=clock)
    assert policy.retry is not None
    with pytest.raises(RetryError):
        policy.retry.call(failing(ConnectionError()))
    assert clock.now() == 1.0
    with pytest.raises(DaemonUnavailable):
        policy.breakers["daemon"].call(failing(DaemonUnavailable()))
    assert state(policy.breakers["daemon"]) is State.OPEN
    assert load_policy(write(tmp_path, "", "empty.yml"), clock=clock).retry is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "retry:\n  on: [OSError]\n  atempts: 3\n",
            "3: retry.atempts: unknown key (did you mean 'attempts'?)",
        ),
        (
            "retry:\n  on: [OSError]\n  attempts: '3'\n",
            "3: retry.attempts: expected an integer >= 1, got a string ('3')",
        ),
        (
            "retry:\n  on:\n    - OSError\n    - ConectionError\n",
            "4: retry.on[2]: unknown exception 'ConectionError': a builtin exception, a "
            "pytest_resilience error, or a dotted name such as 'httpx.ConnectError' (did you mean "
            "'ConnectionError'?)",
        ),
        ("stream:\n  idle: 1s\nstream:\n  total: 2s\n", "3: stream: given twice (first at line 1)"),
        (
            "retry:\n  on: [OSError\n  attempts: 2\n",
            "3: invalid YAML: expected ',' or ']', but got ':' (column 11), while parsing a flow "
            "sequence that starts at line 2",
        ),
        ("- retry\n", "1: a policy file is a mapping of sections, not a list"),
        (
            "stream: {}\n---\nretry: {}\n",
            "2: invalid YAML: but found another document (column 1), expected a single document "
            "in the stream that starts at line 1",
        ),
        (
            "degrade:\n  restore_below:\n    error_rate: 0.9\n",
            "1: degrade: DegradePolicy needs restore_below lower than degrade_at in both error "
            "rate and latency (hysteresis), got Limits(error_rate=0.9, latency=3.0) and "
            "Limits(error_rate=0.5, latency=10.0)",
        ),
        (
            "client:\n  timeout: yes\n",
            '2: client.timeout: expected a duration (seconds, or text such as "250ms", "2s", '
            '"1m"), or "none", got a boolean (true)',
        ),
    ],
)
def test_a_bad_yaml_policy_is_refused_at_its_line_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    assert error_of(tmp_path, text, "policy.yaml") == f"policy.yaml:{message}"


def test_a_yaml_bomb_is_refused_not_expanded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    message = error_of(tmp_path, "\n".join(lines) + "\n", "policy.yaml")
    assert message.endswith("the document expands to more than 100000 values (aliases?)")


def test_without_pyyaml_a_yaml_policy_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    assert error_of(tmp_path, "retry: {}\n", "policy.yml") == (
        "policy.yml:1: reading a YAML policy needs PyYAML: install pytest-resilience[yaml] "
        "(or write the policy as TOML)"
    )
    # TOML needs nothing more
    assert load_policy(write(tmp_path, "[stream]\nidle = 1\n")).guard is not None


def test_fallback_errors_reach_the_caller(tmp_path: Path, clock: VirtualClock) -> None:
    policy = load(
        tmp_path,
        '[fallback]\non = ["BackendError"]\n[[fallback.steps]]\ncall = "a"\n',
        clock,
        steps={"a": failing(BackendError("down"))},
    )
    assert policy.fallback is not None
    with pytest.raises(FallbackError):
        policy.fallback()
