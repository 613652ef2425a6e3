"""pytest-xdist support, registered as a plugin only when pytest-xdist is there (its hook
would be unknown otherwise): every worker runs with the controller's fault seed, so that a
test meets the same faults whichever worker runs it. The figures reach the controller with
the workers' reports, where :class:`~pytest_resilience.plugin.report.Reporter` sums them.
"""

from __future__ import annotations

from typing import Any

from pytest_resilience.plugin.options import WORKER_KEY
from pytest_resilience.plugin.state import settings_of

__all__ = ["pytest_configure_node"]


def pytest_configure_node(node: Any) -> None:
    """Hand the controller's seed to a worker (read back by the options, as the seed)."""
    node.workerinput[WORKER_KEY] = settings_of(node.config).seed
