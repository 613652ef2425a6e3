"""Each test's verdicts (:mod:`faults.verdicts`): how the app behaved under the faults that
fired, judged from the test's journal with no assertion written for it. The entry point
registers this module as a plugin of its own. It acts in three places:

- at setup, before any fixture: it notes the resources open in the process-wide registry,
  so that what the test opens is told from what was open before;
- at the end of the call phase (innermost, while the test's injections are still
  installed, so that their specs say which faults fire on every call): every verdict but
  ``closed``; ``cut-stream`` only if the test passed, and only for the cuts the test did
  not ask for itself (a marker's, the ``faults`` fixture's: its own assertions judge
  those, an expected error included, which leaves no event);
- after the teardown (every fixture finalised): ``closed``, on the streams and responses
  registered since the setup began and still open, and on those the leak check reported
  (it failed the test for them: they are counted, not warned of again).

Only a test in whose journal a fault fired is judged (``TestState.judged``); its broken
verdicts are kept in ``TestState.verdicts`` for the report. What a broken verdict does is
``resilience_verdicts`` (ini) or the test's ``verdicts`` marker says: ``warn`` (default), a
:class:`faults.VerdictBroken` warning per verdict, which ``-W error`` (or
``filterwarnings = error``) makes a failure of the test, as for ``FaultNotReached``;
``fail``, a failure listing them; ``off``, no judging at all. A test that failed anyway is
not failed again: its report lists them.

Nothing here imports :mod:`faults` before a fault has fired: a run without faults pays a
marker lookup per test.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Final

import pytest

from pytest_resilience.plugin.state import (
    MARKER_SPEC,
    SETTINGS,
    STATE,
    VERDICT_MODES,
    VerdictMode,
)

if TYPE_CHECKING:
    from collections.abc import Generator, Sequence

    from faults.verdicts import Broken
    from pytest_resilience.core.leaks import Leak
    from pytest_resilience.plugin.state import TestState

__all__ = [
    "mode_of",
    "pytest_collection_modifyitems",
    "pytest_runtest_call",
    "pytest_runtest_setup",
    "pytest_runtest_teardown",
]

#: The keys of the resources open in the process-wide registry as the test's setup began.
_OPEN_BEFORE: Final = pytest.StashKey[frozenset[int]]()
#: Set when the call phase failed: the verdicts found after it are reported with the failure.
_FAILED: Final = pytest.StashKey[bool]()
_REGISTRY: Final = "pytest_resilience.core.leak_registry"


def mode_of(item: pytest.Item) -> tuple[VerdictMode, tuple[str, ...]]:
    """How ``item``'s broken verdicts are reported, and the verdicts it does not judge: its
    closest ``verdicts`` marker's ``mode`` (else ``resilience_verdicts``) and ``ignore``."""
    mode: VerdictMode = item.config.stash[SETTINGS].verdicts
    marker = item.get_closest_marker("verdicts")
    if marker is None:
        return mode, ()
    given = marker.kwargs.get("mode", marker.args[0] if marker.args else None)
    ignore = marker.kwargs.get("ignore", ())
    return (mode if given is None else given), (
        (ignore,) if isinstance(ignore, str) else tuple(ignore)
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A ``verdicts`` marker with an unknown mode or verdict is a usage error now."""
    for item in items:
        marker = item.get_closest_marker("verdicts")
        if marker is None:
            continue
        path, line, _ = item.location
        where = f"@pytest.mark.verdicts on {item.nodeid} ({path}:{(line or 0) + 1})"
        unknown = set(marker.kwargs) - {"mode", "ignore"}
        if unknown or len(marker.args) > 1:
            raise pytest.UsageError(f"{where}: takes mode and ignore=, not {marker!r}")
        mode, ignore = mode_of(item)
        if mode not in VERDICT_MODES:
            raise pytest.UsageError(
                f"{where}: mode must be {', '.join(VERDICT_MODES)}, not {mode!r}"
            )
        from faults.verdicts import check_ids  # noqa: PLC0415 - only runs that mark tests

        try:
            check_ids(ignore)
        except (ValueError, TypeError) as exc:
            raise pytest.UsageError(f"{where}: {exc}") from None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Note the resources open before the test's fixtures."""
    registry = sys.modules.get(_REGISTRY)  # not imported yet: nothing is registered
    if registry is not None and mode_of(item)[0] != "off":
        item.stash[_OPEN_BEFORE] = frozenset(registry.default_registry().open_resources())


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Judge the test's verdicts but ``closed`` as its call phase ends; report the broken
    ones of a test that passed."""
    try:
        result = yield
    except BaseException:
        item.stash[_FAILED] = True
        _judge(item, passed=False)
        raise
    _report(item, _judge(item, passed=True))
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """Judge ``closed`` once every fixture is finalised; report it unless the test failed
    already, or its teardown did (the leak check's report names the same streams)."""
    try:
        result = yield
    except BaseException:
        _judge_closed(item)
        raise
    left = _judge_closed(item)
    if not item.stash.get(_FAILED, False):
        _report(item, left)
    return result


def _judged_state(item: pytest.Item) -> TestState | None:
    """The test's state, if its verdicts are to be judged: a fault fired, and not off."""
    state = item.stash.get(STATE, None)
    if state is None or not state.used or mode_of(item)[0] == "off":
        return None
    for gather in state.gather:  # faults fired in the processes the app started
        gather()
    events = sys.modules.get("pytest_resilience.core.events")
    if events is None or not state.journal.events(events.FaultInjected):
        return None
    return state


def _judge(item: pytest.Item, *, passed: bool) -> list[Broken]:
    state = _judged_state(item)
    if state is None:
        return []
    from faults.verdicts import judge  # noqa: PLC0415 - a fault fired: faults is imported

    _, ignore = mode_of(item)
    specs = [injector.spec for injector in state.installed]
    broken = judge(
        state.journal,
        specs=specs,
        passed=passed,
        asked=_asked(item, state),
        ignore=(*ignore, "closed"),
    )
    state.judged = True
    state.verdicts.extend(broken)
    return broken


def _asked(item: pytest.Item, state: TestState) -> set[str]:
    """The sites the test asked faults of itself: its ``faults`` markers' and those of the
    injections of its own (the ``faults`` fixture), not the run-wide spec's."""
    marker = item.stash.get(MARKER_SPEC, None)
    sites = {str(e.site) for e in marker.entries} if marker is not None else set()
    for injector in state.installed:
        if injector.spec is not state.spec:
            sites.update(str(e.site) for e in injector.spec.entries)
    return sites


def _judge_closed(item: pytest.Item) -> list[Broken]:
    """The streams and responses left open: those still open now, to report; and those
    the leak check already reported, only counted."""
    state = item.stash.get(STATE, None)
    if state is None or not state.judged or "closed" in mode_of(item)[1]:
        return []
    import dataclasses  # noqa: PLC0415

    from faults.verdicts import VERDICTS, judge  # noqa: PLC0415

    others = tuple(v for v in VERDICTS if v != "closed")
    events = state.journal.events()
    left = judge(events, open_resources=_left_open(item), ignore=others)
    reported = [
        dataclasses.replace(b, evidence=f"{b.evidence} (the leak check reported it)")
        for b in judge(events, open_resources=_leak_check_reported(item), ignore=others)
    ]
    state.verdicts.extend([*left, *reported])
    return left


def _left_open(item: pytest.Item) -> list[Leak]:
    """The streams and responses registered since the setup began and still open (after
    one garbage collection, if any is: one that only a reference cycle keeps is dropped)."""
    registry = sys.modules.get(_REGISTRY)
    if registry is None:
        return []
    from faults.verdicts import abandonable  # noqa: PLC0415

    before = item.stash.get(_OPEN_BEFORE, frozenset())

    def left() -> list[Leak]:
        found = registry.default_registry().open_resources().items()
        return [leak for key, leak in found if key not in before and abandonable(leak)]

    if not left():
        return []
    import gc  # noqa: PLC0415

    gc.collect()
    return left()


def _leak_check_reported(item: pytest.Item) -> list[Leak]:
    """What the leak check reported for this test (it dismisses them from the registry)."""
    fixtures = sys.modules.get("pytest_resilience.plugin.fixtures")
    if fixtures is None:
        return []
    reported: list[Leak] = item.stash.get(fixtures.LeakCheck.REPORTED, [])
    return reported


def _report(item: pytest.Item, broken: Sequence[Broken]) -> None:
    """Warn of each broken verdict, or fail the test, as the test's mode says."""
    if not broken:
        return
    import warnings  # noqa: PLC0415

    from faults.verdicts import VerdictBroken, format_broken  # noqa: PLC0415

    if mode_of(item)[0] == "fail":
        noun = "verdict" if len(broken) == 1 else "verdicts"
        pytest.fail(
            f"the app broke {len(broken)} {noun} under faults (resilience_verdicts = fail):\n"
            + format_broken(broken),
            pytrace=False,
        )
    path, line, _ = item.reportinfo()
    errors: list[str] = []
    for one in broken:
        try:
            warnings.warn_explicit(
                VerdictBroken(str(one)),
                VerdictBroken,
                filename=str(path),
                lineno=(line or 0) + 1,
            )
        except VerdictBroken as exc:  # -W error: the test fails, without our traceback
            errors.append(f"VerdictBroken: {exc}")
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)
