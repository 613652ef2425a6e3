"""The hooks the plugin offers a suite, added with ``pytest_addhooks``: implement them in a
``conftest.py`` (or a plugin of your own) to record figures of your own for each test, to
change the rows of the ``resilience`` section of the terminal summary, or to replace the
command line printed to reproduce a failure under faults. Like any pytest hook, an
implementation may take only the arguments it needs; the per-test hooks see only the
``conftest.py`` files that apply to the test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_resilience.plugin.state import TestState, Totals

__all__ = [
    "pytest_resilience_reproduce_command",
    "pytest_resilience_summary",
    "pytest_resilience_test_figures",
]


@pytest.hookspec
def pytest_resilience_test_figures(
    item: pytest.Item, state: TestState, figures: dict[str, Any]
) -> None:
    """Add to (or change) the figures recorded for ``item``, at its teardown.

    Called for each test the plugin had something to do with (it ran under faults, used a
    fixture of the plugin's that records into the test's journal, or leaked), in the
    process that ran it (a pytest-xdist worker too). ``figures`` holds the plugin's own
    (``faults_injected``, ``retries``, ``transitions``, ``fallbacks``, ``leaks``,
    ``under_faults``, ...); change it in place. Each figure other than ``faults`` and
    ``reach`` becomes the JUnit user property ``resilience.<name>`` (a mapping, as the sum
    of its values), and a figure of your own that is a number or a mapping of names to
    numbers is summed over the run into ``totals.extra[name]``, which
    :func:`pytest_resilience_summary` can show. Values must be JSON-serialisable.

    :param item: the test.
    :param state: what the plugin knows of it: its ``journal`` (every event recorded), the
        ``spec`` it ran under (None when it ran without run-wide or marker faults).
    :param figures: the figures to record, by name.
    """


@pytest.hookspec
def pytest_resilience_summary(
    config: pytest.Config, totals: Totals, rows: list[tuple[str, str]]
) -> None:
    """Change the rows of the ``resilience`` section of the terminal summary.

    Called at the end of the run (on the pytest-xdist controller, with the figures of every
    worker), unless the run is ``-qq``. ``rows`` is the table the section prints, as
    ``(label, value)`` pairs, in order; add, remove or change rows in place. In a run with
    nothing of the plugin's to show (no faults, no leak found), ``rows`` is empty, and the
    section is printed only if an implementation adds a row.

    :param config: the run's configuration.
    :param totals: the sums of every test's figures; ``totals.extra`` holds those that
        :func:`pytest_resilience_test_figures` implementations added.
    :param rows: the table, as ``(label, value)`` pairs.
    """


@pytest.hookspec(firstresult=True)
def pytest_resilience_reproduce_command(item: pytest.Item, command: str) -> str | None:
    """Return the command line that reproduces ``item`` as it ran, in place of ``command``.

    Called for each test that ran under faults, as its call phase ends; the command is
    shown in the report of a failure (``resilience: reproduce with``), listed at the end of
    the summary and recorded as the JUnit user property ``resilience.reproduce``. Return
    None to keep ``command``; the first implementation that returns a string wins.

    :param item: the test.
    :param command: the plugin's own command: ``pytest``, the test's node id relative to
        where pytest was started, and the options that make the faults the same.
    """
