"""The whole suite runs with the plugin's own leak check on (``resilience_leak_check`` in
pyproject.toml): a test that leaves a thread, a file descriptor or a child process behind
fails at teardown with the list of what leaked. Session and module fixtures are set up
before the check starts, so what they hold is not counted; function fixtures are torn down
before it ends. A test that leaks on purpose says so with ``@pytest.mark.no_leak_check``.

The pytest runs that tests start themselves (pytester) read the plugin's environment
variables: a developer's own settings are cleared, so that they cannot change the results.
"""

from __future__ import annotations

import pytest

from pytest_resilience.plugin.hooks import ENVIRONMENT

# The fault sweep's test app is a project of its own, with its own tests: the sweep tests
# run them through pytester, from the app's folder.
collect_ignore = ["sweep_app"]


@pytest.fixture(autouse=True)
def _no_resilience_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
