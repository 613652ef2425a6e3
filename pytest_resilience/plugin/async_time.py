"""Virtual time for async code: the event loops a virtual-time test makes run on its clock.

While a test runs in virtual time, its ``clock`` (a
:class:`~pytest_resilience.plugin.fixtures.TestClock`) is the process's *current* clock, and
the event loop policy's ``new_event_loop()`` returns a loop of that clock
(:meth:`VirtualClock.new_event_loop`). Every way of getting a loop goes through it:
``asyncio.run`` and ``asyncio.Runner`` in a sync test, pytest-asyncio's test loop (its runner
uses the policy it found at the start of the session), and anyio's asyncio backend. The
policy is a :class:`ClockPolicy` that hands everything else to the policy it wraps:

- a run with a virtual-time pytest-asyncio test installs one for the whole session, at
  collection, so that pytest-asyncio finds it; it is put back at the end of the run;
- otherwise the test's clock installs one for the test, and puts the old policy back.

Between virtual-time tests no clock is current, and the policy makes the loops the policy
it wraps makes: a test without virtual time gets exactly the loops it would get without the
plugin. What virtual time cannot cover is refused instead of running in real time: a
pytest-asyncio loop wider than the test and anyio's trio backend, as the clock is set up
(:func:`refuse_uncovered`); a test loop made before the test's clock or by a policy or loop
factory of its own, before and after the call (:func:`check_before_call`,
:func:`check_after_call`).
"""

from __future__ import annotations

import asyncio
import inspect
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pytest_resilience.core.virtual_clock import VirtualClock
    from pytest_resilience.plugin.fixtures import TestClock

__all__ = [
    "ClockPolicy",
    "check_after_call",
    "check_before_call",
    "install_for_session",
    "refuse_uncovered",
    "use_clock",
]

# The clocks whose tests are running, innermost last (a test may run pytest in process).
_clocks: list[VirtualClock] = []

# asyncio's policy base class (renamed when policies were deprecated).
_PolicyBase: Any = (
    getattr(asyncio.events, "_AbstractEventLoopPolicy", None)
    or asyncio.events.AbstractEventLoopPolicy
)


class ClockPolicy(_PolicyBase):  # type: ignore[misc]
    """An event loop policy that makes the current test clock's loops (any other policy's
    while no virtual-time test runs) and hands everything else to the policy it wraps."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        if _clocks:
            return _clocks[-1].new_event_loop()
        loop: asyncio.AbstractEventLoop = self.base.new_event_loop()
        return loop

    def get_event_loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop = self.base.get_event_loop()
        return loop

    def set_event_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.base.set_event_loop(loop)

    def get_child_watcher(self) -> Any:
        return self.base.get_child_watcher()

    def set_child_watcher(self, watcher: Any) -> None:
        self.base.set_child_watcher(watcher)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


@contextmanager
def _quiet() -> Iterator[None]:
    # Event loop policies are deprecated from Python 3.14 on; they still decide the loops.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _policy() -> Any:
    with _quiet():
        return asyncio.get_event_loop_policy()


def _set_policy(policy: Any) -> None:
    with _quiet():
        asyncio.set_event_loop_policy(policy)


def install_for_session(config: pytest.Config) -> None:
    """Wrap the event loop policy in a :class:`ClockPolicy` until the end of the run, so that
    pytest-asyncio, which takes the policy once per session, makes its loops through it."""
    policy = _policy()
    if isinstance(policy, ClockPolicy):
        return
    ours = ClockPolicy(policy)
    _set_policy(ours)

    def restore() -> None:
        if _policy() is ours:
            _set_policy(policy)

    config.add_cleanup(restore)


def use_clock(clock: VirtualClock) -> Callable[[], None]:
    """Make ``clock`` the one new event loops run on; returns the undo."""
    policy = _policy()
    installed = None
    if not isinstance(policy, ClockPolicy):
        installed = ClockPolicy(policy)
        _set_policy(installed)
    _clocks.append(clock)

    def undo() -> None:
        for index in range(len(_clocks) - 1, -1, -1):
            if _clocks[index] is clock:
                del _clocks[index]
                break
        if installed is not None and _policy() is installed:
            _set_policy(policy)

    return undo


def refuse_uncovered(request: pytest.FixtureRequest) -> None:
    """Fail a virtual-time test whose event loop cannot be its clock's, before it is made:
    a pytest-asyncio test on a loop wider than the test (it would outlive the clock), a
    test on anyio's trio backend (trio's loop keeps trio's clock)."""
    _refuse_wide_loop(request)
    _refuse_other_backends(request)


def _refuse_wide_loop(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("asyncio")
    if marker is None:
        return
    scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
    if scope is None:
        try:
            scope = request.config.getini("asyncio_default_test_loop_scope")
        except ValueError:  # a pytest-asyncio without the option: function-scoped loops
            scope = None
    if scope in (None, "", "function"):
        return
    pytest.fail(
        f"virtual time runs the test's event loop on the test's clock, and this test runs on "
        f"a {scope}-scoped loop, which outlives the test and its clock. Give it a function-"
        "scoped loop (pytest.mark.asyncio(loop_scope='function')), or mark it real_time.",
        pytrace=False,
    )


def _refuse_other_backends(request: pytest.FixtureRequest) -> None:
    if "anyio_backend" not in request.fixturenames:
        return
    backend = request.getfixturevalue("anyio_backend")
    name = backend[0] if isinstance(backend, tuple) and backend else backend
    if name == "asyncio":
        return
    pytest.fail(
        f"virtual time runs asyncio event loops on the test's clock, and this test runs on "
        f"anyio's {name!r} backend, whose waits would take real time. Run it on asyncio (an "
        "anyio_backend fixture returning 'asyncio'), or mark it real_time (trio's own "
        "trio.testing.MockClock(autojump_threshold=0), passed as the backend's clock option, "
        "gives trio a virtual clock of its own, apart from the test's clock and journal).",
        pytrace=False,
    )


_ELSEWHERE = (
    "made before the test's clock or by a factory of its own: an asyncio loop_scope wider "
    "than 'function', an async fixture of a wider scope sharing the loop, an overridden "
    "event_loop_policy fixture, a pytest_asyncio_loop_factories hook, or an anyio_backend "
    "with a loop_factory. Give the test a function-scoped loop, or mark it real_time."
)


def _ours(loop: asyncio.AbstractEventLoop, clock: VirtualClock) -> bool:
    return getattr(loop, "clock", None) is clock


def check_before_call(item: pytest.Item, clock: TestClock) -> None:
    """Fail a virtual-time test whose pytest-asyncio loop does not run on its clock, before
    it waits in real time."""
    funcargs: dict[str, object] = getattr(item, "funcargs", {})
    for value in funcargs.values():
        if not isinstance(value, asyncio.Runner):
            continue
        try:
            loop = value.get_loop()
        except RuntimeError:  # closed
            continue
        if not _ours(loop, clock):
            pytest.fail(
                "this test runs in virtual time, but its event loop "
                f"({type(loop).__name__}) does not follow its clock: it was {_ELSEWHERE}",
                pytrace=False,
            )


def check_after_call(item: pytest.Item, clock: TestClock) -> None:
    """Fail a virtual-time async test that ran without an event loop of its clock (its waits
    took real time)."""
    function = getattr(item, "obj", None)
    if clock.loops_made or not inspect.iscoroutinefunction(function):
        return
    pytest.fail(
        "this async test runs in virtual time, but no event loop of its clock ran it, so its "
        "waits took real time: virtual time covers asyncio loops (pytest-asyncio, anyio's "
        f"asyncio backend, asyncio.run), and the loop this test ran on was {_ELSEWHERE}",
        pytrace=False,
    )
