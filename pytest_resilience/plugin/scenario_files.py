"""Scenario files as tests: a ``*.toml`` scenario in a ``resilience_scenarios`` folder, named
on the command line, or in a folder named ``scenarios`` that is, is collected as one
:class:`ScenarioItem`, which replays it (steady state, steps, expectations, rollbacks) with
:mod:`faults.scenario` under its own ``[faults]`` (never the run-wide ones) and fails with
the scenario's readable report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["ScenarioFailed", "ScenarioFile", "ScenarioItem", "pytest_collect_file"]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect ``*.toml`` scenario files: in a ``resilience_scenarios`` folder, or named."""
    if file_path.suffix != ".toml" or not _is_scenario_file(parent.config, file_path):
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


def _is_scenario_file(config: pytest.Config, path: Path) -> bool:
    root = config.rootpath
    folders = [(root / str(f)).resolve() for f in config.getini("resilience_scenarios")]
    named = {(config.invocation_params.dir / a.split("::")[0]).resolve() for a in config.args}
    path = path.resolve()
    if path in named or any(f in path.parents for f in folders):
        return True
    # a folder named on the command line collects the scenarios in it
    return any(n.is_dir() and n in path.parents and n.name == "scenarios" for n in named)


class ScenarioFailed(Exception):
    """A scenario did not hold; the message is the readable report."""


class ScenarioFile(pytest.File):
    """A scenario file: it holds one test, named after the file."""

    def collect(self) -> Iterator[pytest.Item]:
        yield ScenarioItem.from_parent(self, name=self.path.stem)


class ScenarioItem(pytest.Item):
    """One scenario file, replayed as a test: steady state, steps, expectations, rollbacks."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_marker("no_faults")  # the scenario's own [faults] are the faults

    def runtest(self) -> None:
        from faults import scenario  # noqa: PLC0415 - only runs that collect scenarios pay

        try:
            loaded = scenario.load(self.path)
        except scenario.ScenarioError as exc:
            raise ScenarioFailed(str(exc)) from exc
        seed = scenario.seed_override(self.config.getoption("resilience_fault_seed"))
        outcome = scenario.run(loaded, seed=seed)
        if not outcome.passed:
            raise ScenarioFailed(scenario.format_failure(outcome))

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario {self.path.name}"
