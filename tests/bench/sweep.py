"""What a fault sweep costs: cells per second on the example project (docs/example), and a
cell's cost against a plain run of the same test.

``python -m tests.bench.sweep [--runs 3]`` copies docs/example into a temporary folder and
runs ``pytest --fault-sweep --fault-sweep-json`` there in fresh processes. From each run's
JSON it reads the cells, the time they took (``seconds``), and each test's plain run in the
fault-free pass (``plain_seconds``: setup, call and teardown). That pass starts with the
tests that name their own faults (a plugin of the bench's, in the copy), so that the
session's setup (the tiny model, importing llama-cpp-python), which every cell finds done,
is not counted in the plain run of a swept test. It prints, as the median over the runs,
the cells per second, the mean wall time of a cell, the mean plain run of the tests swept,
their ratio, and the whole process's wall time against a plain ``pytest``.
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
#: first. They set up the session and are not swept at their marker's site.
_ORDER = """
def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.get_closest_marker("faults") is None)
"""


@dataclass(frozen=True, slots=True)
class Run:
    cells: int
    sweep_seconds: float  # the cells' phase
    cell_seconds: float  # a cell, on average
    plain_seconds: float  # a plain run of a swept test, on average (the fault-free pass)
    process_seconds: float  # the whole pytest process with --fault-sweep
    plain_process_seconds: float  # the whole pytest process without it

    @property
    def cells_per_second(self) -> float:
        return self.cells / self.sweep_seconds if self.sweep_seconds else 0.0

    @property
    def ratio(self) -> float:
        return self.cell_seconds / self.plain_seconds if self.plain_seconds else 0.0


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
    return Run(
        cells=len(cells),
        sweep_seconds=float(data["seconds"]),
        cell_seconds=statistics.fmean(c["seconds"] for c in cells) if cells else 0.0,
        plain_seconds=statistics.fmean(plain) if plain else 0.0,
        process_seconds=process,
        plain_process_seconds=plain_process,
    )


def measure(runs: int) -> list[Run]:
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as scratch:
        folder = Path(scratch) / "example"
        shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__", ".*"))
        (folder / "bench_order.py").write_text(_ORDER, encoding="utf-8")
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
