"""The public strategies and the BreakerMachine template keep their promises.

Every drawn fault spec parses, is canonical and pasteable, honours its restrictions, runs
under the injector, and shrinks to a short spec; drawn retry and breaker settings build
working policies that their printed form rebuilds; and the BreakerMachine passes for code
that wraps its dependency correctly and fails, with the right complaint, for code that
does not (a template that cannot fail would prove nothing).
"""

from __future__ import annotations

import contextlib
import shlex
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

import faults
from faults import parse
from faults.effects import resolve_exception_type
from faults.kinds import KINDS, SITES
from faults.strategies import fault_specs
from pytest_resilience.core.breaker import (
    CircuitBreaker,
    ConsecutiveFailures,
    CountWindow,
    HalfOpen,
    TimeWindow,
)
from pytest_resilience.core.cancel import deadline
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import CircuitOpenError, DeadlineExceeded, RetryError
from pytest_resilience.core.events import BreakerTransition, FaultInjected
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.retry import Backoff, Jitter, Retry
from pytest_resilience.plugin.breaker_machine import BreakerMachine, Dependency
from pytest_resilience.plugin.strategies import (
    BreakerSettings,
    RetrySettings,
    backoffs,
    breaker_settings,
    retry_settings,
    trip_policies,
)
from tests.unit import fault_targets

if TYPE_CHECKING:
    from collections.abc import Callable

SETTINGS = settings(max_examples=60, deadline=None)
# find() and the machines that must fail: the same examples every run, no database.
FIND = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.generate, Phase.shrink],  # not explain, which reruns the minimal example a lot
)


# ---------------------------------------------------------------------------- fault specs


@given(fault_specs())
@SETTINGS
def test_every_spec_is_canonical_and_within_the_defaults(text: str) -> None:
    spec = parse(text)
    assert str(spec) == text
    assert 1 <= len(spec) <= 3
    for entry in spec:
        assert entry.site.family != "py"  # no made-up module by default
        assert 1 <= len(entry.chain) <= 3
        for term in entry.chain:
            assert term.kind != "off"
            assert term.info.admits(entry.site.key)
            assert term.count is None or term.count <= 5
            assert term.at is None or term.at <= 5
            if term.kind == "raise":
                assert issubclass(resolve_exception_type(str(term.arg("type"))), Exception)


@given(fault_specs())
@SETTINGS
def test_a_printed_spec_pastes_into_a_shell_as_it_is(text: str) -> None:
    # hypothesis prints spec='...': after --inject-faults, the shell gives back the text.
    assert shlex.split(f"pytest --inject-faults {text!r}") == ["pytest", "--inject-faults", text]


@given(
    sites=st.lists(st.sampled_from(list(SITES)), min_size=1, max_size=4, unique=True),
    kinds=st.lists(st.sampled_from(list(KINDS)), min_size=1, max_size=4, unique=True),
    data=st.data(),
)
@settings(SETTINGS, suppress_health_check=[HealthCheck.too_slow])
def test_specs_keep_to_the_sites_and_kinds_given(
    sites: list[str], kinds: list[str], data: st.DataObject
) -> None:
    unfit = [s for s in sites if not any(KINDS[k].admits(s) for k in kinds)]
    if unfit:
        with pytest.raises(ValueError, match=f"site '{unfit[0]}' admits none of the kinds"):
            fault_specs(sites=sites, kinds=kinds)
        return
    spec = parse(data.draw(fault_specs(sites=sites, kinds=kinds, max_entries=2, max_terms=2)))
    assert len(spec) <= 2
    for entry in spec:
        assert str(entry.site) in sites
        assert len(entry.chain) <= 2
        assert {term.kind for term in entry.chain} <= set(kinds)


@given(fault_specs(sites="py:myapp.llm:Client.ask", kinds=["raise"], exceptions=["TimeoutError"]))
@SETTINGS
def test_a_py_site_and_the_exceptions_given(text: str) -> None:
    [entry] = parse(text)
    assert str(entry.site) == "py:myapp.llm:Client.ask"
    assert {term.arg("type") for term in entry.chain} == {"TimeoutError"}


RUNNABLE = ["none", "raise", "corrupt", "oom", "latency", "off"]


@given(fault_specs(sites="py:tests.unit.fault_targets:answer", kinds=RUNNABLE))
@SETTINGS
def test_drawn_specs_run_under_the_injector(text: str) -> None:
    [entry] = parse(text)
    raised = tuple(
        resolve_exception_type(str(term.arg("type")))
        for term in entry.chain
        if term.kind == "raise"
    )
    clock, journal = VirtualClock(), Journal()
    answers = 0
    unexpected: list[Exception] = []
    with faults.inject(text, clock=clock, journal=journal) as run:
        for _ in range(6):
            try:
                answers += fault_targets.answer("ready?") == "yes, ready?"
            except Exception as exc:
                if not isinstance(exc, (*raised, MemoryError)):
                    unexpected.append(exc)
    assert unexpected == []
    site = str(entry.site)
    assert run.calls(site) == 6
    assert len(journal.events(FaultInjected)) == run.injected(site)
    assert answers >= 6 - run.injected(site)


@pytest.mark.parametrize(
    ("strategy", "condition", "minimal"),
    [
        (fault_specs(), lambda text: True, "llama.generate=none"),
        (fault_specs(), lambda text: "llama.stream" in text, "llama.stream=corrupt"),
        (fault_specs(), lambda text: "daemon.request" in text, "daemon.request=refuse"),
        (fault_specs(), lambda text: "->" in text, "llama.generate=none->none"),
        (fault_specs(), lambda text: "*" in text, "llama.generate=1*none"),
        (fault_specs(kinds=["raise"]), lambda text: True, "llama.generate=raise(ConnectionError)"),
        (fault_specs(sites=["llama.stream"]), lambda text: True, "llama.stream=corrupt"),
        (
            fault_specs(sites=["llama.stream"], kinds=["stall", "truncate"]),
            lambda text: True,
            "llama.stream=stall",  # the first kind given, with its defaults
        ),
        (fault_specs(kinds=["timeout"]), lambda text: True, "llama.generate=timeout"),
    ],
)
def test_specs_shrink_to_one_short_term(
    strategy: st.SearchStrategy[str], condition: Callable[[str], bool], minimal: str
) -> None:
    assert find(strategy, condition, settings=FIND) == minimal


def test_two_sites_shrink_to_two_plain_entries() -> None:
    spec = parse(find(fault_specs(), lambda text: ";" in text, settings=FIND))
    assert [str(e.chain[0]) for e in spec] == ["none", "none"]
    assert {str(e.site) for e in spec} == {"llama.generate", "llama.chat"}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"sites": ["llama.stram"]}, r"unknown site 'llama.stram' \(did you mean 'llama.stream'"),
        ({"sites": ["py:myapp"]}, r"a py: site is py:MODULE:QUALNAME"),
        ({"sites": []}, r"sites= names nothing"),
        ({"kinds": ["stal"]}, r"unknown fault kind 'stal' \(did you mean 'stall'\?\)"),
        (
            {"sites": ["llama.load"], "kinds": ["none"]},
            r"site 'llama.load' admits none of the kinds none "
            r"\(it admits: off, raise, oom, crash\)",
        ),
        ({"exceptions": ["ConectionError"]}, r"unknown exception type 'ConectionError'"),
        ({"exceptions": []}, r"exceptions= names nothing"),
        ({"max_entries": 0}, r"max_entries >= 1"),
        ({"max_terms": 0}, r"max_terms >= 1"),
    ],
)
def test_bad_arguments_are_refused_at_once(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fault_specs(**arguments)


def test_names_must_be_strings() -> None:
    with pytest.raises(TypeError, match="takes names"):
        fault_specs(kinds=[ConnectionError])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------- retry


class Flaky:
    """Fails with ConnectionError ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"call {self.calls}")
        return "ok"


def run_retry(policy: Retry, failures: int) -> tuple[object, int]:
    flaky = Flaky(failures)
    try:
        outcome: object = policy.call(flaky)
    except RetryError as exc:
        outcome = exc.reason
    return outcome, flaky.calls


@given(settings_=retry_settings(), failures=st.integers(0, 6))
@SETTINGS
def test_retry_settings_build_a_policy_that_keeps_its_settings(
    settings_: RetrySettings, failures: int
) -> None:
    clock = VirtualClock()
    policy = settings_.build(ConnectionError, clock=clock)
    assert (policy.attempts, policy.backoff, policy.budget) == (
        settings_.attempts,
        settings_.backoff,
        settings_.budget,
    )
    outcome, calls = run_retry(policy, failures)
    assert calls <= settings_.attempts
    if outcome == "ok":
        assert calls == failures + 1
    else:
        assert outcome in ("attempts", "budget")
        assert failures >= calls
    if settings_.budget is not None:
        assert clock.now() <= settings_.budget
    assert clock.now() <= (calls - 1) * max(settings_.backoff.cap, 0.0)
    # What hypothesis prints rebuilds the same policy: the same waits, to the last bit.
    again = settings_.build(ConnectionError)
    assert run_retry(again, failures) == (outcome, calls)
    assert again.clock.now() == clock.now()
    assert "object at" not in repr(settings_)


@given(retry_settings(attempts=st.just(2), budget=st.none(), backoff=backoffs(jitters="none")))
@SETTINGS
def test_retry_settings_take_the_strategies_given(settings_: RetrySettings) -> None:
    assert (settings_.attempts, settings_.budget) == (2, None)
    assert settings_.backoff.jitter is Jitter.NONE


@given(backoffs(max_delay=5.0, jitters=["full", "equal"]))
@SETTINGS
def test_backoffs_keep_to_their_bounds(backoff: Backoff) -> None:
    assert 0 <= backoff.base <= 5.0
    assert 0 <= backoff.cap <= 5.0
    assert 1.0 <= backoff.factor <= 10.0
    assert backoff.jitter in (Jitter.FULL, Jitter.EQUAL)


def test_the_simplest_retry_never_waits() -> None:
    simplest = find(retry_settings(), lambda s: True, settings=FIND)
    assert simplest == RetrySettings(1, Backoff(0.0, 1.0, 0.0, "none"), None, 0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_delay": -1.0}, "finite max_delay >= 0"),
        ({"max_delay": float("inf")}, "finite max_delay >= 0"),
        ({"jitters": ["fulll"]}, "unknown jitter 'fulll'; known: none, full"),
    ],
)
def test_bad_backoff_arguments_are_refused(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        backoffs(**arguments)


# -------------------------------------------------------------------------------- breaker


def settle(breaker: CircuitBreaker, failed: bool) -> None:
    def outcome() -> str:
        if failed:
            raise ConnectionError("down")
        return "ok"

    with contextlib.suppress(ConnectionError):
        breaker.call(outcome)


# Any recovery but an instant one: the test needs an open breaker to stay open.
LASTING = st.builds(
    HalfOpen, after=st.floats(0.001, 600.0), probes=st.integers(1, 3), successes=st.integers(1, 3)
)


@given(
    settings_=breaker_settings(trip=trip_policies(max_calls=6), recovery=LASTING),
    history=st.lists(st.booleans(), max_size=30),
)
@SETTINGS
def test_breaker_settings_build_a_breaker_that_opens_by_the_threshold(
    settings_: BreakerSettings, history: list[bool]
) -> None:
    journal = Journal()
    breaker = settings_.build("llm", on=ConnectionError, journal=journal)
    assert (breaker.trip, breaker.recovery, breaker.slow_after) == (
        settings_.trip,
        settings_.recovery,
        settings_.slow_after,
    )
    threshold = settings_.threshold
    if threshold is None:
        assert isinstance(settings_.trip, TimeWindow)
        return
    # However the closed breaker got here, `threshold` failures in a row open it. The
    # clock never moves, so once open it stays open.
    streak = 0
    for failed in [*history, *[True] * threshold]:
        if breaker.state != "closed":
            break
        settle(breaker, failed)
        streak = streak + 1 if failed else 0
        assert breaker.state == "open" or streak < threshold
    assert breaker.state == "open"
    assert [(e.from_state, e.to_state) for e in journal.events(BreakerTransition)] == [
        ("closed", "open")
    ]


@pytest.mark.parametrize(
    ("trip", "threshold"),
    [
        (ConsecutiveFailures(4), 4),
        (CountWindow(size=10, rate=0.5), 10),  # min_calls defaults to the window size
        (CountWindow(size=10, rate=0.5, min_calls=2), 5),
        (CountWindow(size=10, rate=0.3, min_calls=1), 3),  # 0.3 * 10 is a hair over 3
        (CountWindow(size=4, rate=1.0, min_calls=1), 4),
        (TimeWindow(seconds=10, rate=0.5), None),
    ],
)
def test_the_threshold_of_each_trip_policy(trip: Any, threshold: int | None) -> None:
    assert BreakerSettings(trip, HalfOpen()).threshold == threshold


def test_the_threshold_is_tight_after_a_window_of_successes() -> None:
    breaker = BreakerSettings(CountWindow(size=10, rate=0.3, min_calls=1), HalfOpen()).build(
        on=ConnectionError
    )
    for failed in [False] * 10 + [True] * 2:
        settle(breaker, failed)
    assert breaker.state == "closed"
    settle(breaker, True)
    assert breaker.state == "open"


def test_the_simplest_breaker_settings() -> None:
    simplest = find(breaker_settings(), lambda s: True, settings=FIND)
    assert simplest == BreakerSettings(ConsecutiveFailures(1), HalfOpen(30.0, 1, 1), None)


def test_trip_policies_need_a_call() -> None:
    with pytest.raises(ValueError, match="max_calls >= 1"):
        trip_policies(max_calls=0)


# ----------------------------------------------------------------------------- dependency


def test_the_dependency_answers_fails_and_waits_on_the_clock() -> None:
    clock = VirtualClock()
    dependency = Dependency(clock, failure=TimeoutError, slow_after=2.0, result=42)
    assert dependency("anything", at="all") == 42
    dependency.failing()
    with pytest.raises(TimeoutError, match="call 2"):
        dependency()
    dependency.slow(3.0)
    assert dependency() == 42
    assert clock.now() == 3.0
    dependency.slow(1.0)
    assert dependency() == 42
    assert [(c.number, c.time, c.mode, c.failed) for c in dependency.calls] == [
        (1, 0.0, "healthy", False),
        (2, 0.0, "failing", True),
        (3, 0.0, "slow", True),  # slower than slow_after
        (4, 3.0, "slow", False),
    ]
    assert repr(dependency) == "<Dependency slow 1s, 4 calls>"
    with pytest.raises(ValueError, match="delay >= 0"):
        dependency.slow(-1.0)


def test_a_deadline_cuts_a_slow_dependency_short() -> None:
    clock = VirtualClock()
    dependency = Dependency(clock)
    dependency.slow(10.0)
    with pytest.raises(DeadlineExceeded), deadline(2.0, clock=clock):
        dependency()
    assert clock.now() == 2.0
    assert dependency.calls[-1].failed  # cut short: the caller saw a failure


def test_the_async_dependency() -> None:
    clock = VirtualClock()
    dependency = Dependency(clock)
    dependency.slow(5.0)
    assert clock.run(dependency.acall()) == "ok"
    assert clock.now() == 5.0
    dependency.failing()
    with pytest.raises(ConnectionError):
        clock.run(dependency.acall())
    assert [c.failed for c in dependency.calls] == [False, True]


# ---------------------------------------------------------------------------- the machine

MACHINE = settings(max_examples=40, stateful_step_count=20, deadline=None)
# A broken machine must be caught; shrinking the steps is not what is tested here.
MUST_FAIL = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.generate],
)


def breaker(clock: VirtualClock, journal: Journal | None, **changes: Any) -> CircuitBreaker:
    options: dict[str, Any] = {
        "on": ConnectionError,
        "trip": ConsecutiveFailures(3),
        "recovery": 10.0,
        "clock": clock,
        "journal": journal,
    }
    options.update(changes)
    return CircuitBreaker("llm", **options)


class Guarded(BreakerMachine):
    """The plain case: every call goes through a breaker of three failures, 10 s."""

    threshold = 3
    recovery = 10.0

    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(clock, journal)
        return lambda: guard.call(dependency, "hello")


class RetriedWithFallback(BreakerMachine):
    """A client: a retry around the breaker, and a canned answer when the breaker is open."""

    threshold = 4
    recovery = 30.0
    successes = 2
    raises: ClassVar[tuple[type[Exception], ...]] = (RetryError,)

    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(
            clock, journal, trip=ConsecutiveFailures(4), recovery=HalfOpen(30.0, successes=2)
        )
        retry = Retry(on=ConnectionError, attempts=2, backoff=Backoff.fixed(1.0), clock=clock)

        def ask() -> object:
            try:
                return retry.call(guard.call, dependency, "hello")
            except CircuitOpenError:
                return "(the model is resting)"

        return ask


class CountedWithSlowCalls(BreakerMachine):
    """A failure-rate window, and slow calls counted as failures."""

    threshold = BreakerSettings(CountWindow(size=6, rate=0.5, min_calls=2), HalfOpen()).threshold
    recovery = 5.0
    slow_after = 2.0

    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(
            clock,
            journal,
            trip=CountWindow(size=6, rate=0.5, min_calls=2),
            recovery=5.0,
            slow_after=2.0,
        )
        return lambda: guard.call(dependency)


class WithTimeout(BreakerMachine):
    """A deadline inside the breaker: a slow call is cut short and counted as a failure."""

    threshold = 2
    recovery = 10.0
    slow_after = 1.0
    raises: ClassVar[tuple[type[Exception], ...]] = (DeadlineExceeded,)

    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(
            clock, journal, on=(ConnectionError, DeadlineExceeded), trip=ConsecutiveFailures(2)
        )

        def bounded() -> object:
            with deadline(1.0, clock=clock):
                return dependency()

        return lambda: guard.call(bounded)


class Async(BreakerMachine):
    """An async client."""

    threshold = 3
    recovery = 10.0

    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(clock, journal)

        async def ask() -> object:
            return await guard.acall(dependency.acall, "hello")

        return ask


class TwoBreakers(Guarded):
    """The journal also holds another breaker's transitions; breaker_name picks ours."""

    breaker_name: ClassVar[str | None] = "llm"

    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        other = CircuitBreaker("other", on=KeyError, trip=ConsecutiveFailures(1), journal=journal)
        guard = breaker(clock, journal)

        def ask() -> object:
            with contextlib.suppress(KeyError, CircuitOpenError):
                other.call(dict[str, str]().__getitem__, "missing")
            return guard.call(dependency)

        return ask


@pytest.mark.parametrize(
    "machine", [Guarded, RetriedWithFallback, CountedWithSlowCalls, WithTimeout, Async, TwoBreakers]
)
def test_the_machine_passes_code_that_wraps_its_dependency(machine: type[BreakerMachine]) -> None:
    run_state_machine_as_test(machine, settings=MACHINE)


# Code that gets it wrong, each in one way, and what the machine must say about it.


class CallsAroundTheBreaker(Guarded):
    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(clock, journal)

        def ask() -> object:
            try:
                return guard.call(dependency)
            except CircuitOpenError:
                return dependency()  # "just this once"

        return ask


class NoBreaker(Guarded):
    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        return lambda: dependency("hello")


class CountsTheWrongErrors(Guarded):
    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(clock, journal, on=TimeoutError)
        return lambda: guard.call(dependency)


class TooPatient(Guarded):
    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(clock, journal, trip=ConsecutiveFailures(5))
        return lambda: guard.call(dependency)


class ProbesTooSoon(Guarded):
    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(clock, journal, recovery=2.0)
        return lambda: guard.call(dependency)


class NeverRecovers(Guarded):
    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(clock, journal, recovery=HalfOpen(10.0, successes=3))
        return lambda: guard.call(dependency)


class SecretlyCountsSlowCalls(Guarded):
    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(clock, journal, slow_after=0.5)
        return lambda: guard.call(dependency)


class KeepsNoJournal(Guarded):
    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(clock, None)
        return lambda: guard.call(dependency)


class ReportsAnIllegalMove(Guarded):
    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(clock, journal)

        def ask() -> object:
            if dependency.mode == "failing":  # a hand-written breaker, badly
                journal.append(
                    BreakerTransition(
                        time=clock.now(), source="llm", from_state="closed", to_state="half_open",
                        reason="why not",
                    )
                )  # fmt: skip
            return guard.call(dependency)

        return ask


class FailsWhenHealthy(Guarded):
    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        guard = breaker(clock, journal)

        def ask() -> object:
            answer = guard.call(dependency)
            if dependency.calls[-1].number % 5 == 0:
                raise ConnectionError("a bug of our own, blamed on the network")
            return answer

        return ask


@pytest.mark.parametrize(
    ("machine", "complaint"),
    [
        (CallsAroundTheBreaker, "called .* while the journal shows the breaker open"),
        (NoBreaker, "failed 3 times in a row, and the journal shows the breaker still closed"),
        (CountsTheWrongErrors, "does its on= match ConnectionError"),
        (TooPatient, "must open after threshold = 3 consecutive failures"),
        (ProbesTooSoon, "half-opened after .*s open, before recovery = 10s"),
        (NeverRecovers, "recovery = 10s passed .* the journal shows the breaker half_open"),
        (SecretlyCountsSlowCalls, r"opened \(.*slow call.*\) without a failed dependency call"),
        (KeepsNoJournal, "Does build\\(\\) pass the machine's journal"),
        (ReportsAnIllegalMove, "closed -> half_open \\(why not\\) is not a legal transition"),
        (FailsWhenHealthy, "raised ConnectionError.* while the dependency was healthy"),
    ],
)
def test_the_machine_catches_code_that_gets_the_breaker_wrong(
    machine: type[BreakerMachine], complaint: str
) -> None:
    with pytest.raises(AssertionError, match=complaint) as caught:
        run_state_machine_as_test(machine, settings=MUST_FAIL)
    assert "timeline (virtual seconds):" in str(caught.value)


class Unnamed(Guarded):
    """Another breaker opens once ours has: without breaker_name, which one is watched?"""

    raises: ClassVar[tuple[type[Exception], ...]] = (KeyError,)

    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        other = CircuitBreaker("other", on=KeyError, trip=ConsecutiveFailures(1), journal=journal)
        guard = breaker(clock, journal)

        def ask() -> object:
            try:
                return guard.call(dependency)
            except CircuitOpenError:
                return other.call(dict[str, str]().__getitem__, "missing")

        return ask


def test_several_breakers_need_a_name() -> None:
    with pytest.raises(ValueError, match="several breakers \\('llm', 'other'\\): set breaker_name"):
        run_state_machine_as_test(Unnamed, settings=MUST_FAIL)


def test_a_failure_says_which_breaker_it_watched() -> None:
    class Unnamed(TwoBreakers):
        breaker_name: ClassVar[str | None] = None

    with pytest.raises(AssertionError, match="watching breaker 'other', the first in the journal"):
        run_state_machine_as_test(Unnamed, settings=MUST_FAIL)


def test_a_machine_without_build_says_so() -> None:
    class Empty(BreakerMachine):
        pass

    with pytest.raises(NotImplementedError, match="Empty must define build"):
        run_state_machine_as_test(Empty, settings=MUST_FAIL)


def test_bad_declarations_fail_when_the_class_is_defined() -> None:
    with pytest.raises(ValueError, match=r"threshold must be >= 1 .*; successes must be >= 1"):

        class Bad(BreakerMachine):
            threshold = 0
            successes = 0

    with pytest.raises(ValueError, match="failure must be an Exception class"):

        class Worse(BreakerMachine):
            failure = KeyboardInterrupt  # type: ignore[assignment]
