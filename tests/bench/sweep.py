"""What a fault sweep costs: cells per second on the example project (docs/example), and a
cell's cost against a plain run of the same test.

``python -m tests.bench.sweep [--runs 3]`` copies docs/example into a temporary folder and
runs ``pytest --fault-sweep --fault-sweep-json`` there in fresh processes. From each run's
JSON it reads the cells, the time they took (``seconds``), and each test's plain run in the
fault-free pass (``plain_seconds``: setup, call and teardown). That pass starts with the
tests that name their own faults (a plugin of the bench's, in the copy), so that the
session's setup (the tiny model, importing llama-cpp-python), which every cell finds done,
is not counted in the plain run of a swept test. The same plugin then, in the same process
right after the cells, runs each swept test again without any fault or sweep, as a plain
``pytest`` would, :data:`_WARM` times after one run to warm up, and keeps the median: a
warm plain run, timed the way a cell is, on the same machine at the same moment. It prints,
as the median over the runs, the cells per second, the mean wall time of a cell, the mean
plain run of the tests swept (in the fault-free pass, and warm), the ratios, a cell's CPU
time (the mean, the median and the slowest cell: a mean far above the median says that a
few cells are slow, not all), and the whole process's wall time against a plain ``pytest``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "example"
_ARGS = ("-q", "-p", "no:cacheprovider", "-p", "no:asyncio", "--fault-seed", "1")
#: A plugin of the bench's own, written into the copy: the tests with a faults marker run
#: first (they set up the session and are not swept at their marker's site); after the
#: cells, each swept test runs again without faults, warm, and its median goes to warm.json.
_ORDER = """
import json, statistics, time

import pytest
from _pytest.runner import runtestprotocol

from pytest_resilience.plugin.fixtures import LeakCheck
from pytest_resilience.plugin.state import SETTINGS, STATE


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.get_closest_marker("faults") is None)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: after the sweep's cells
def pytest_runtestloop(session):
    sweep = session.config.pluginmanager.get_plugin("resilience-sweep")
    run_cell, cpu = sweep._run_cell, []

    def timed(*args):
        started = time.process_time()
        try:
            return run_cell(*args)
        finally:
            cpu.append(time.process_time() - started)

    sweep._run_cell = timed
    result = yield
    settings = session.config.stash[SETTINGS]
    spec, reach_only = settings.spec, settings.reach_only
    settings.spec, settings.reach_only = None, False  # no fault, as without --fault-sweep
    warm = {}
    try:
        for test in dict.fromkeys(r.test for r in sweep.sweep.results):
            item = sweep.items[test]
            times, cpu_times = [], []
            for i in range(WARM + 1):
                for key in (STATE, LeakCheck.REPORTED):
                    if key in item.stash:
                        del item.stash[key]
                item.user_properties.clear()
                item._report_sections = []
                started, started_cpu = time.perf_counter(), time.process_time()
                runtestprotocol(item, nextitem=item.parent if i < WARM else None, log=False)
                times.append(time.perf_counter() - started)
                cpu_times.append(time.process_time() - started_cpu)
            warm[test] = [statistics.median(times[1:]), statistics.median(cpu_times[1:])]
    finally:
        settings.spec, settings.reach_only = spec, reach_only
    with open("warm.json", "w", encoding="utf-8") as out:
        json.dump({"warm": warm, "cells_cpu": cpu}, out)
    return result
"""
#: The warm plain runs of each swept test whose median the bench takes (wall and CPU time:
#: on a busy machine the CPU time of the process is the steadier of the two).
_WARM = 6


@dataclass(frozen=True, slots=True)
class Run:
    cells: int
    sweep_seconds: float  # the cells' phase
    cell_seconds: float  # a cell, on average
    plain_seconds: float  # a plain run of a swept test, on average (the fault-free pass)
    warm_seconds: float  # a warm plain run of a swept test, on average (medians, see above)
    cell_cpu: float  # a cell's CPU time (the process's, every thread), on average
    cell_cpu_median: float  # a typical cell's: far below the mean when a few cells are slow
    cell_cpu_max: float  # the slowest cell's
    warm_cpu: float  # a warm plain run's CPU time, on average (medians)
    process_seconds: float  # the whole pytest process with --fault-sweep
    plain_process_seconds: float  # the whole pytest process without it

    @property
    def cells_per_second(self) -> float:
        return self.cells / self.sweep_seconds if self.sweep_seconds else 0.0

    @property
    def ratio(self) -> float:
        return self.cell_seconds / self.plain_seconds if self.plain_seconds else 0.0

    @property
    def warm_ratio(self) -> float:
        return self.cell_seconds / self.warm_seconds if self.warm_seconds else 0.0

    @property
    def cpu_ratio(self) -> float:
        return self.cell_cpu / self.warm_cpu if self.warm_cpu else 0.0


def _pytest(folder: Path, *extra: str) -> float:
    command = [sys.executable, "-m", "pytest", *_ARGS, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1: cells that did not survive, which is no error
        raise RuntimeError(f"pytest failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed


def measure_once(folder: Path) -> Run:
    """One sweep of the example in ``folder``, and plain runs of the tests it swept."""
    plain_process = _pytest(folder)
    sweep = ("--fault-sweep", "--fault-sweep-json", "sweep.json", "-p", "bench_order")
    process = _pytest(folder, *sweep)
    data = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    cells = data["cells"]
    plain = [data["plain_seconds"][test] for test in {c["test"] for c in cells}]
    warm = json.loads((folder / "warm.json").read_text(encoding="utf-8"))
    return Run(
        cells=len(cells),
        sweep_seconds=float(data["seconds"]),
        cell_seconds=statistics.fmean(c["seconds"] for c in cells) if cells else 0.0,
        plain_seconds=statistics.fmean(plain) if plain else 0.0,
        warm_seconds=statistics.fmean(w[0] for w in warm["warm"].values()) if cells else 0.0,
        cell_cpu=statistics.fmean(warm["cells_cpu"]) if cells else 0.0,
        cell_cpu_median=statistics.median(warm["cells_cpu"]) if cells else 0.0,
        cell_cpu_max=max(warm["cells_cpu"], default=0.0),
        warm_cpu=statistics.fmean(w[1] for w in warm["warm"].values()) if cells else 0.0,
        process_seconds=process,
        plain_process_seconds=plain_process,
    )


def measure(runs: int) -> list[Run]:
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as scratch:
        folder = Path(scratch) / "example"
        shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__", ".*"))
        (folder / "bench_order.py").write_text(f"WARM = {_WARM}\n{_ORDER}", encoding="utf-8")
        return [measure_once(folder) for _ in range(runs)]


def report(results: Sequence[Run]) -> str:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    first = results[0]
    lines = [
        f"fault sweep of docs/example: {first.cells} cells, median of {len(results)} runs",
        f"  cells per second        {median([r.cells_per_second for r in results]):8.1f}",
        f"  a cell                  {median([r.cell_seconds for r in results]) * 1000:8.1f} ms",
        f"  a plain run of the test {median([r.plain_seconds for r in results]) * 1000:8.1f} ms",
        f"  cell / plain run        {median([r.ratio for r in results]):8.2f}",
        f"  a warm plain run        {median([r.warm_seconds for r in results]) * 1000:8.1f} ms",
        f"  cell / warm plain run   {median([r.warm_ratio for r in results]):8.2f}",
        f"  a cell, CPU             {median([r.cell_cpu for r in results]) * 1000:8.1f} ms",
        f"    median, slowest       {median([r.cell_cpu_median for r in results]) * 1000:8.1f} ms"
        f" {median([r.cell_cpu_max for r in results]) * 1000:8.1f} ms",
        f"  a warm plain run, CPU   {median([r.warm_cpu for r in results]) * 1000:8.1f} ms",
        f"  cell / warm plain, CPU  {median([r.cpu_ratio for r in results]):8.2f}",
        f"  pytest --fault-sweep    {median([r.process_seconds for r in results]):8.2f} s",
        f"  pytest                  {median([r.plain_process_seconds for r in results]):8.2f} s",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="sweeps to take the median of")
    options = parser.parse_args(argv)
    print(report(measure(options.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
