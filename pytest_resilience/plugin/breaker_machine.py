"""A hypothesis state-machine template for the circuit breaker in front of your dependency.

Install the extra (``pip install pytest-resilience[hypothesis]``) and import this module in
your tests; ``import pytest_resilience`` never imports it, nor hypothesis. It imports
hypothesis and the core, and never pytest.

:class:`BreakerMachine` is a hypothesis ``RuleBasedStateMachine`` for *your* code. You say
how to build it around a :class:`Dependency` the machine controls; the machine makes the
dependency healthy, failing or slow, calls your code, lets virtual time pass, and checks,
after every step, contracts that hold for any code that puts a circuit breaker in front of
a dependency: the breaker moves only along legal transitions, the dependency is never
called while the breaker is open, a failing dependency opens the breaker after the number
of failures you declare, and a healthy one closes it again after the recovery time you
declare.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ..core.cancel import current_scope
from ..core.clock import VirtualClock
from ..core.errors import CircuitOpenError
from ..core.events import BreakerTransition, CallRejected, Event
from ..core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["BreakerMachine", "Dependency", "DependencyCall"]


@dataclass(frozen=True, slots=True)
class DependencyCall:
    """One call of a :class:`Dependency`: its number (from 1), the clock's time when it was
    called, the mode it was in, and whether the breaker should count it as a failure (it
    raised, was cut short, or took longer than the declared ``slow_after``)."""

    number: int
    time: float
    mode: str
    failed: bool


class Dependency:
    """The service your code protects, as a :class:`BreakerMachine` drives it.

    Call it (``dependency(*args, **kwargs)``) or await ``dependency.acall(...)``; it takes
    any arguments. Healthy, it returns :attr:`result`. Failing, it raises ``failure``.
    Slow, it waits ``delay`` seconds on the clock first: in the current deadline scope
    when one runs on the same clock (which ends the wait early, as a real timeout would),
    else with ``clock.sleep`` (``clock.asleep`` for ``acall``). ``slow_after`` decides
    whether a slow call counts as a failure. Every call is appended to :attr:`calls`, and
    passed to ``record`` if given.
    """

    def __init__(
        self,
        clock: VirtualClock,
        *,
        failure: type[Exception] = ConnectionError,
        slow_after: float | None = None,
        result: object = "ok",
        record: Callable[[DependencyCall], None] | None = None,
    ) -> None:
        self.clock = clock
        self.failure = failure
        self.slow_after = slow_after
        self.result = result
        self.calls: list[DependencyCall] = []
        self._record = record
        self._mode = "healthy"
        self._delay = 0.0

    def __repr__(self) -> str:
        slow = f" {self._delay:g}s" if self._mode == "slow" else ""
        return f"<Dependency {self._mode}{slow}, {len(self.calls)} calls>"

    @property
    def mode(self) -> str:
        """``"healthy"``, ``"failing"`` or ``"slow"``."""
        return self._mode

    def healthy(self) -> None:
        """Answer every call at once."""
        self._mode, self._delay = "healthy", 0.0

    def failing(self) -> None:
        """Raise ``failure`` on every call."""
        self._mode, self._delay = "failing", 0.0

    def slow(self, delay: float) -> None:
        """Answer every call after ``delay`` seconds. Raises ``ValueError`` if negative."""
        if not delay >= 0:
            raise ValueError(f"a slow dependency needs a delay >= 0, got {delay}")
        self._mode, self._delay = "slow", delay

    def _note(self, time: float, *, failed: bool) -> None:
        call = DependencyCall(len(self.calls) + 1, time, self._mode, failed)
        self.calls.append(call)
        if self._record is not None:
            self._record(call)

    def _fail(self, time: float) -> Exception:
        self._note(time, failed=True)
        return self.failure(f"the dependency is failing (call {len(self.calls)})")

    def _slow(self, finished: bool) -> bool:
        return not finished or (self.slow_after is not None and self._delay > self.slow_after)

    def __call__(self, *args: object, **kwargs: object) -> Any:
        start = self.clock.now()
        if self._mode == "failing":
            raise self._fail(start)
        finished = self._mode == "healthy"
        try:
            if not finished:
                scope = current_scope()
                if scope is not None and scope.clock is self.clock:
                    scope.wait(self._delay, what="a slow dependency")
                else:
                    self.clock.sleep(self._delay)
                finished = True
        finally:  # recorded even when a deadline cut the wait short
            self._note(start, failed=self._slow(finished))
        return self.result

    async def acall(self, *args: object, **kwargs: object) -> Any:
        """The async form of a call: the same modes, waiting with ``clock.asleep``."""
        start = self.clock.now()
        if self._mode == "failing":
            raise self._fail(start)
        finished = self._mode == "healthy"
        try:
            if not finished:
                await self.clock.asleep(self._delay)
                finished = True
        finally:
            self._note(start, failed=self._slow(finished))
        return self.result


# Transitions a breaker makes by itself, and the manual ones by the reason they record.
_AUTOMATIC: Final = frozenset(
    {("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("half_open", "open")}
)
_MANUAL: Final = {
    "reset()": "closed",
    "force_open()": "forced_open",
    "force_closed()": "forced_closed",
    "disable()": "disabled",
}
_SHOWN: Final = 25  # timeline lines in a failure message


def _describe(item: Event | DependencyCall) -> str:
    if isinstance(item, DependencyCall):
        what = "failed" if item.failed else "answered"
        return f"{item.time:10.3f}s dependency call {item.number} ({item.mode}): {what}"
    if isinstance(item, BreakerTransition):
        return (
            f"{item.time:10.3f}s breaker {item.source!r}: {item.from_state} -> "
            f"{item.to_state} ({item.reason})"
        )
    if isinstance(item, CallRejected):
        return f"{item.time:10.3f}s breaker {item.source!r} rejected a call ({item.state})"
    return f"{item.time:10.3f}s {item.kind} [{item.source}]"


class _Contract:
    """Reads the timeline of breaker transitions and dependency calls, in order, and fails
    at the first item that breaks the contract."""

    def __init__(self, machine: BreakerMachine) -> None:
        self.machine = machine
        self.source = machine.breaker_name
        self.state = "closed"
        self.streak = 0  # failed dependency calls in a row since the last transition
        self.failed_since = 0  # failed dependency calls since the last transition
        self.opened_at: float | None = None
        self.read = 0  # timeline items read so far

    def fail(self, problem: str) -> AssertionError:
        timeline = self.machine._timeline[: self.read][-_SHOWN:]
        shown = "\n".join(_describe(item) for item in timeline)
        if self.machine.breaker_name is None and self.source is not None:
            problem += (
                f"\n(watching breaker {self.source!r}, the first in the journal; set "
                "breaker_name to watch another)"
            )
        return AssertionError(f"{problem}\n\ntimeline (virtual seconds):\n{shown}")

    def catch_up(self) -> None:
        timeline = self.machine._timeline
        while self.read < len(timeline):
            item = timeline[self.read]
            self.read += 1
            if isinstance(item, DependencyCall):
                self.called(item)
            elif isinstance(item, BreakerTransition):
                self.moved(item)
        self.settled()

    def limit(self) -> int | None:
        """Failed calls in a row after which the breaker must have opened, in this state."""
        if self.state == "half_open":
            return 1  # one failed probe reopens a breaker
        return self.machine.threshold if self.state == "closed" else None

    def called(self, call: DependencyCall) -> None:
        if self.state in ("open", "forced_open"):
            raise self.fail(
                f"the dependency was called (call {call.number}) while the journal shows the "
                f"breaker {self.state}: does the code call it around the breaker?"
            )
        limit = self.limit()
        if limit is not None and self.streak >= limit:
            raise self.fail(self._not_open(call.number))
        if call.failed:
            self.streak += 1
            self.failed_since += 1
        else:
            self.streak = 0

    def settled(self) -> None:
        """The checks that hold once a call of the code has returned."""
        limit = self.limit()
        if limit is not None and self.streak >= limit:
            raise self.fail(self._not_open(None))

    def _not_open(self, next_call: int | None) -> str:
        m = self.machine
        then = f" and call {next_call} went through" if next_call is not None else ""
        if self.state == "half_open":
            return (
                f"a probe failed in half_open{then}, and the breaker did not reopen: one "
                "failed probe must reopen it"
            )
        return (
            f"the dependency failed {self.streak} times in a row{then}, and the journal "
            f"shows the breaker still closed: it must open after threshold = {m.threshold} "
            f"consecutive failures. Does build() pass the machine's journal to the "
            f"CircuitBreaker, does its on= match {m.failure.__name__}, and is its trip "
            f"policy the one threshold describes?"
        )

    def moved(self, event: BreakerTransition) -> None:
        if self.source is None:
            self.source = event.source
        elif event.source != self.source:
            if self.machine.breaker_name is None:
                raise ValueError(
                    f"the journal has transitions of several breakers ({self.source!r}, "
                    f"{event.source!r}): set breaker_name on {type(self.machine).__name__} "
                    "to the one that protects the dependency"
                )
            return  # another breaker's business
        before, after = event.from_state, event.to_state
        if before != self.state:
            raise self.fail(
                f"the journal shows {before} -> {after}, but the breaker was {self.state}"
            )
        if (before, after) not in _AUTOMATIC and _MANUAL.get(event.reason) != after:
            raise self.fail(f"{before} -> {after} ({event.reason}) is not a legal transition")
        if after == "open" and self.failed_since == 0:
            raise self.fail(
                f"the breaker opened ({event.reason}) without a failed dependency call since "
                f"it became {before}: is slow_after = {self.machine.slow_after} the "
                "breaker's, and does its on= count only the dependency's failures?"
            )
        recovery = self.machine.recovery
        if (before, after) == ("open", "half_open") and recovery is not None:
            assert self.opened_at is not None  # open is only entered through "open" events
            waited = event.time - self.opened_at
            if waited < recovery * (1 - 1e-9) - 1e-9:
                raise self.fail(
                    f"the breaker half-opened after {waited:g}s open, before recovery = "
                    f"{recovery:g}s: is that the breaker's HalfOpen.after?"
                )
        if after == "open":
            self.opened_at = event.time
        self.state = after
        self.streak = self.failed_since = 0


class BreakerMachine(RuleBasedStateMachine):
    """A state machine that checks the circuit breaker in front of a dependency of yours.

    Subclass it, define :meth:`build`, declare the breaker's settings in the class
    attributes, and turn it into a test case::

        class ClientMachine(BreakerMachine):
            threshold = 3       # consecutive failures that open the breaker
            recovery = 30.0     # seconds open before a probe goes through

            def build(self, dependency, clock, journal):
                breaker = CircuitBreaker("llm", on=ConnectionError,
                    trip=ConsecutiveFailures(3), recovery=30.0, clock=clock, journal=journal)
                client = Client(backend=dependency, breaker=breaker)
                return lambda: client.ask("hello")

        TestClient = ClientMachine.TestCase

    Each example builds your code afresh, with a new ``VirtualClock``, ``Journal`` and
    :class:`Dependency`. The rules switch the dependency between failing, healthy, slow
    (twice ``slow_after``: a failure) and lagging (half of it: a success); call your code
    1 to 8 times (the coroutine of an ``async`` function runs on the clock's event loop);
    let 0.5 to 2 times ``recovery`` pass; while the breaker is open, call your code just
    before the recovery time is up; and while it is open or half-open, heal the
    dependency, wait out ``recovery`` and call ``successes`` times, after which it must be
    closed. After every step the machine reads the journal's breaker transitions and the
    dependency's calls in order, and fails at the first of these that does not hold:

    - transitions follow the breaker's graph (closed -> open -> half_open -> closed or
      back to open; manual resets and forcing from anywhere), each from the state the
      previous one left;
    - the dependency is never called while the breaker is open;
    - the breaker opens only after a failed dependency call, and half-opens no sooner than
      ``recovery`` seconds after it opened;
    - ``threshold`` failed calls in a row leave the breaker open, and a failed probe
      reopens it;
    - while the dependency is healthy and the breaker closed, a call of your code does not
      raise.

    A call of your code may raise ``failure``, ``CircuitOpenError`` and the exceptions in
    ``raises``; anything else fails the test, as it is. The checks assume that one call
    through the breaker calls the dependency at most once.
    """

    #: Consecutive failed dependency calls after which the breaker must be open (for a
    #: ``CountWindow``, :attr:`.strategies.BreakerSettings.threshold` computes it); ``None``
    #: skips the check, for a ``TimeWindow``.
    threshold: ClassVar[int | None] = 5
    #: Seconds the breaker stays open before it lets a probe through (``HalfOpen.after``);
    #: ``None`` skips the checks that need it.
    recovery: ClassVar[float | None] = 30.0
    #: Successful probes that close a half-open breaker (``HalfOpen.successes``).
    successes: ClassVar[int] = 1
    #: The breaker's ``slow_after``: a call slower than this counts as a failure.
    slow_after: ClassVar[float | None] = None
    #: What a failing dependency raises (the breaker's ``on=`` must count it).
    failure: ClassVar[type[Exception]] = ConnectionError
    #: Other exceptions your code may raise when the dependency fails or the breaker is open
    #: (a ``RetryError``, a ``DeadlineExceeded``, an error of your own).
    raises: ClassVar[tuple[type[Exception], ...]] = ()
    #: The name of the breaker to watch, when the journal holds more than one.
    breaker_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        problems = []
        if cls.threshold is not None and cls.threshold < 1:
            problems.append(f"threshold must be >= 1 or None, got {cls.threshold!r}")
        if cls.recovery is not None and not (math.isfinite(cls.recovery) and cls.recovery >= 0):
            problems.append(f"recovery must be finite and >= 0, or None, got {cls.recovery!r}")
        if cls.successes < 1:
            problems.append(f"successes must be >= 1, got {cls.successes!r}")
        if cls.slow_after is not None and not cls.slow_after > 0:
            problems.append(f"slow_after must be > 0 or None, got {cls.slow_after!r}")
        failure: object = cls.failure  # annotations do not stop a subclass from a typo
        if not (isinstance(failure, type) and issubclass(failure, Exception)):
            problems.append(f"failure must be an Exception class, got {failure!r}")
        if problems:
            raise ValueError(f"{cls.__name__}: " + "; ".join(problems))

    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock()
        self.journal = Journal()
        # One timeline of journal events and dependency calls, in the order they happened.
        self._timeline: list[Event | DependencyCall] = []
        self.journal.subscribe(self._timeline.append)
        self.dependency = Dependency(
            self.clock,
            failure=self.failure,
            slow_after=self.slow_after,
            record=self._timeline.append,
        )
        self._contract = _Contract(self)
        self.code = self.build(self.dependency, self.clock, self.journal)

    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        """Build the code under test around ``dependency``; return one call of it.

        Give the breaker ``clock`` and ``journal``. The returned function takes no
        arguments; it may be an ``async`` function. Subclasses must define this.
        """
        raise NotImplementedError(f"{type(self).__name__} must define build()")

    def _call(self) -> None:
        healthy = self.dependency.mode == "healthy"
        closed = self._contract.state == "closed"
        raised: Exception | None = None
        expected: tuple[type[Exception], ...] = (self.failure, CircuitOpenError, *self.raises)
        try:
            result = self.code()
            if inspect.iscoroutine(result):
                self.clock.run(result)
        except expected as exc:
            raised = exc
        self._contract.catch_up()
        if raised is not None and healthy and closed and self._contract.state == "closed":
            hint = ""
            if isinstance(raised, CircuitOpenError):
                hint = ": the journal shows no open breaker; does build() pass it the journal?"
            raise self._contract.fail(
                f"the code raised {raised!r} while the dependency was healthy and the "
                f"breaker closed{hint}"
            ) from raised

    # -------------------------------------------------------------------------- rules

    @rule(times=st.integers(1, 8))
    def call_the_code(self, times: int) -> None:
        """Call the code under test ``times`` times."""
        for _ in range(times):
            self._call()

    @rule(mode=st.sampled_from(["failing", "healthy", "slow", "lagging"]))
    def dependency_becomes(self, mode: str) -> None:
        """Failing; healthy; slow, beyond ``slow_after`` (twice it: a failure); lagging,
        within it (half of it: a success). Without ``slow_after``, slow takes 1 s and
        lagging 0.25 s, both successes."""
        if mode == "failing":
            self.dependency.failing()
        elif mode == "healthy":
            self.dependency.healthy()
        else:
            unit = self.slow_after if self.slow_after is not None else 0.5
            self.dependency.slow(2 * unit if mode == "slow" else unit / 2)

    @rule(recoveries=st.sampled_from([0.5, 0.9, 1.0, 2.0]))
    def time_passes(self, recoveries: float) -> None:
        """``recoveries`` times ``recovery`` seconds pass (minutes, without a recovery)."""
        self.clock.advance(recoveries * (self.recovery if self.recovery is not None else 60.0))
        self._contract.catch_up()

    @precondition(lambda self: self.recovery is not None and self._contract.state == "open")
    @rule(part=st.sampled_from([0.5, 0.99]))
    def code_is_called_before_recovery(self, part: float) -> None:
        """While open, ``part`` of the rest of ``recovery`` passes; then one call, which
        must not reach the dependency. (Random steps rarely land in that window.)"""
        assert self.recovery is not None
        assert self._contract.opened_at is not None
        left = self._contract.opened_at + self.recovery - self.clock.now()
        if left > 0:
            self.clock.advance(left * part)
        self._call()

    @precondition(
        lambda self: self.recovery is not None and self._contract.state in ("open", "half_open")
    )
    @rule()
    def dependency_recovers(self) -> None:
        """Heal, wait out ``recovery``, call ``successes`` times: the breaker must close."""
        assert self.recovery is not None
        self.dependency.healthy()
        # A hair over: opened_at + recovery may round below the time it stands for.
        self.clock.advance(self.recovery * (1 + 1e-9) + 1e-9)
        for _ in range(self.successes):
            self._call()
        if self._contract.state != "closed":
            raise self._contract.fail(
                f"the dependency recovered, recovery = {self.recovery:g}s passed and "
                f"{self.successes} call(s) went by, but the journal shows the breaker "
                f"{self._contract.state}: are recovery and successes the breaker's "
                "HalfOpen.after and HalfOpen.successes?"
            )

    @invariant()
    def keeps_the_contract(self) -> None:
        self._contract.catch_up()
