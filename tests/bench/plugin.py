"""What the plugin costs a suite that uses no faults: 1,000 trivial tests, with and without it.

``python -m tests.bench.plugin [--tests 1000] [--runs 5]`` writes a throwaway suite into a
temporary folder and runs it in fresh pytest processes, alternately with the plugin and with
``-p no:resilience``, and prints the median wall time of each and the overhead (the budget
is 5 %). It also prints what importing the plugin costs (``python -X importtime``), whose
budget is 15 ms.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET = 0.05
IMPORT_BUDGET_MS = 15.0


def write_suite(folder: Path, tests: int) -> None:
    """``tests`` trivial tests in files of 100, and an ini that isolates the folder."""
    (folder / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n", encoding="utf-8"
    )
    per_file = 100
    for start in range(0, tests, per_file):
        body = "".join(
            f"def test_{n}():\n    assert {n} + 1 == {n + 1}\n\n"
            for n in range(start, min(start + per_file, tests))
        )
        (folder / f"test_trivial_{start // per_file}.py").write_text(body, encoding="utf-8")


def run_once(folder: Path, *extra: str) -> float:
    """Wall seconds of one pytest process over the suite; raises if a test failed."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"pytest failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed


def import_cost_ms() -> float:
    """Milliseconds ``import pytest_resilience.plugin.hooks`` adds after ``import pytest``
    (the median of five fresh interpreters; cumulative, as ``-X importtime`` reports it)."""
    costs = []
    for _ in range(5):
        done = subprocess.run(
            [
                sys.executable,
                "-X",
                "importtime",
                "-c",
                "import pytest; import pytest_resilience.plugin.hooks",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        match = re.search(r"\|\s*(\d+) \| pytest_resilience\.plugin$", done.stderr, re.M)
        assert match is not None, done.stderr
        costs.append(int(match.group(1)) / 1000)
    return statistics.median(costs)


def measure(tests: int, runs: int) -> tuple[list[float], list[float]]:
    """Wall times with and without the plugin, ``runs`` each, interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_suite(folder, tests)
        run_once(folder)  # warm the file cache
        with_plugin: list[float] = []
        without: list[float] = []
        for _ in range(runs):
            with_plugin.append(run_once(folder))
            without.append(run_once(folder, "-p", "no:resilience"))
    return with_plugin, without


def main(argv: list[str] | None = None) -> int:
    """Measure and print; exit status 1 when a budget is exceeded."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--tests", type=int, default=1000, help="trivial tests (1000)")
    parser.add_argument("--runs", type=int, default=5, help="runs each way (5)")
    args = parser.parse_args(argv)
    cached = "bytecode cache off" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "bytecode"
    importing = import_cost_ms()
    with_plugin, without = measure(args.tests, args.runs)
    on, off = statistics.median(with_plugin), statistics.median(without)
    overhead = on / off - 1
    print(
        f"plugin import after pytest: {importing:.1f} ms ({cached}; budget {IMPORT_BUDGET_MS} ms)"
    )
    print(f"{args.tests} trivial tests, median of {args.runs} runs each:")
    print(f"  with the plugin     {on:.3f} s   ({', '.join(f'{t:.2f}' for t in with_plugin)})")
    print(f"  -p no:resilience    {off:.3f} s   ({', '.join(f'{t:.2f}' for t in without)})")
    print(f"  overhead            {overhead:+.1%} (budget {BUDGET:.0%})")
    return 0 if overhead <= BUDGET and importing <= IMPORT_BUDGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
