"""Fixtures for the whole suite: the leak check runs around every test.

A test that leaves a thread, a file descriptor, a child process behind fails at teardown with
the list of what leaked. Session and module fixtures are set up before the check starts, so
what they hold is not counted; function fixtures are torn down before it ends. A test that
leaks on purpose says so with ``@pytest.mark.no_leak_check``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_resilience.leaks import check, format_leaks, snapshot

if TYPE_CHECKING:
    from collections.abc import Iterator


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "no_leak_check: do not fail this test for leaked threads, fds or processes"
    )


@pytest.fixture(autouse=True)
def _leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("no_leak_check") is not None:
        yield
        return
    before = snapshot()
    yield
    leaks = check(before)
    if leaks:
        pytest.fail(format_leaks(leaks), pytrace=False)
