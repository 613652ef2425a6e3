"""Run every benchmark in tests/bench, one after the other: ``python -m tests.bench.all``.

Each module's ``main(argv)`` runs with its own defaults (``--quick``: a few runs each, to
check that they all still work), its output printed under a heading, and a summary closes
the report. The known modules run first, in this order: core, backends, proxy, stream,
faults, plugin, reach; any other module in the folder with a ``main()`` runs after them. A
known module that does not exist (yet) is reported as missing and skipped.

Exit status 0 unless a benchmark crashed: raised, failed to import, or exited with an error
from ``SystemExit``. A benchmark's own non-zero return (a missed goal under ``--strict``) is
shown in the summary, and is not a crash.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

KNOWN = ("core", "backends", "proxy", "stream", "faults", "plugin", "reach")
#: Not benchmarks: this runner, and run.py (another way to start core).
RUNNERS = frozenset({"all", "run"})
#: ``--quick`` arguments per module: a few runs, to check that the benchmark works.
QUICK: dict[str, list[str]] = {
    "core": ["--rounds", "2", "--target-ms", "2"],
    "backends": ["--runs", "2", "--rounds", "2", "--tokens", "200"],
    "proxy": ["--runs", "3"],
    "stream": ["--runs", "5"],
    "faults": ["--rounds", "2", "--target-ms", "5"],
    "plugin": ["--tests", "100", "--runs", "2"],
    "reach": ["--rounds", "2", "--target-ms", "3"],
}


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # "ok", "returned N", "missing", "no main()", "crashed"
    seconds: float = 0.0

    @property
    def crashed(self) -> bool:
        return self.status == "crashed"


def discover(folder: Path = Path(__file__).parent) -> list[str]:
    """The benchmark modules to run: the known ones in order, then the others found here."""
    found = sorted(
        p.stem for p in folder.glob("*.py") if p.stem not in RUNNERS and not p.stem.startswith("_")
    )
    return [*KNOWN, *(name for name in found if name not in KNOWN)]


def _load(name: str) -> tuple[Callable[[list[str]], int | None] | None, str]:
    """The module's ``main`` (or None) and, without one, why."""
    qualified = f"{__package__ or 'tests.bench'}.{name}"
    try:
        module = importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name == qualified:
            return None, "missing"
        raise  # the module exists but needs something that is not installed: a crash
    main = getattr(module, "main", None)
    return (main, "") if callable(main) else (None, "no main()")


def run_one(name: str, argv: list[str]) -> Outcome:
    """Import and run one benchmark, printing its output; never raises for its failures."""
    start = time.perf_counter()
    try:
        main, why = _load(name)
        if main is None:
            print(f"skipped: {why}")
            return Outcome(name, why)
        code = main(argv)
    except SystemExit as exc:  # an argparse error, or a main() that calls sys.exit
        if exc.code in (None, 0):
            return Outcome(name, "ok", time.perf_counter() - start)
        traceback.print_exc(file=sys.stdout)
        return Outcome(name, "crashed", time.perf_counter() - start)
    except Exception:  # isolation boundary: one crashed benchmark must not stop the others
        traceback.print_exc(file=sys.stdout)
        return Outcome(name, "crashed", time.perf_counter() - start)
    status = "ok" if not code else f"returned {code}"
    return Outcome(name, status, time.perf_counter() - start)


def format_summary(outcomes: Sequence[Outcome]) -> str:
    lines = ["== summary ==", f"{'benchmark':<12}{'status':<14}{'time':>9}"]
    lines += [
        f"{o.name:<12}{o.status:<14}{o.seconds:>8.1f}s" if o.seconds else f"{o.name:<12}{o.status}"
        for o in outcomes
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print their outputs. Exit 1 if any of them crashed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("names", nargs="*", help="run only these benchmarks (default: all)")
    parser.add_argument("--quick", action="store_true", help="a few runs each, as a check")
    args = parser.parse_args(argv)
    names = args.names or discover()
    outcomes = []
    for name in names:
        print(f"\n== {name} ==", flush=True)
        outcome = run_one(name, QUICK.get(name, []) if args.quick else [])
        sys.stdout.flush()
        outcomes.append(outcome)
    print()
    print(format_summary(outcomes))
    return 1 if any(o.crashed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
