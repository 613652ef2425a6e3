"""The command line, ``python -m faults.scenario [PATH ...] [--seed N] [-v]``: :func:`main`
loads every file it is given (a folder means its ``*.toml``) before running any, runs them,
and prints a report of each, with the timeline and replay command of every one that failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from faults.scenario.load import load
from faults.scenario.reading import ScenarioError
from faults.scenario.report import format_failure, format_report
from faults.scenario.runner import run
from faults.scenario.schema import MAX_SEED
from pytest_resilience.core.clock import SystemClock

if TYPE_CHECKING:
    from collections.abc import Sequence

    from faults.scenario.model import Scenario


#: The exit status of :func:`main` when it cannot run what it was given: a usage error (as
#: argparse's), or a scenario file that cannot be loaded (as pytest's collection errors).
USAGE_ERROR: Final = 2


def _seed_arg(text: str) -> int:
    import argparse  # noqa: PLC0415

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is from 0 to 2**64 - 1, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m faults.scenario [PATH ...] [--seed N]``: run scenario files (a folder
    means its ``*.toml``, sorted) and print a report. Every file is loaded before any runs:
    one that cannot be is reported on stderr (file, line, key) and nothing runs. Exit
    status 0 if all held, 1 if any failed, 2 for a usage error or a file that cannot be
    loaded."""
    import argparse  # noqa: PLC0415
    import textwrap  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m faults.scenario", description=main.__doc__)
    parser.add_argument("paths", nargs="*", default=["scenarios"], help="files or folders")
    parser.add_argument(
        "--seed", type=_seed_arg, default=None, help="replace every file's own seed"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every timeline")
    args = parser.parse_args(argv)
    files: list[Path] = []
    for given in map(Path, args.paths):
        files += sorted(given.glob("*.toml")) if given.is_dir() else [given]
    if not files:
        print("no scenario files found", file=sys.stderr)
        return USAGE_ERROR
    scenarios: list[Scenario] = []
    errors: list[ScenarioError] = []
    for file in files:
        try:
            scenarios.append(load(file))
        except ScenarioError as exc:
            errors.append(exc)
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        count = f"{len(errors)} of {len(files)} scenario files" if len(files) > 1 else "it"
        print(f"{count} could not be loaded: nothing was run", file=sys.stderr)
        return USAGE_ERROR
    intro = (
        f"Replaying {len(files)} scenario file{'s' if len(files) > 1 else ''}. Each builds the"
        " code under test (the model in process, or a real model daemon), injects the failures"
        " of its [faults] spec, runs its steps, and checks its [expect] table against what"
        " happened."
    )
    print(textwrap.fill(intro, width=92) + "\n")
    wall = SystemClock()
    started = wall.now()
    failed = 0
    for scenario in scenarios:
        outcome = run(scenario, seed=args.seed)
        print(format_report(outcome))
        if not outcome.passed:
            failed += 1
            print("\n" + format_failure(outcome))
        elif args.verbose:
            print("\n".join(f"        {t}" for t in outcome.journal.timeline().splitlines()))
        print()
    total = len(files)
    print(f"{total - failed} of {total} scenarios held ({wall.now() - started:.1f}s)")
    if not args.verbose:
        print(
            f"Every event of one: python -m faults.scenario -v {files[0]}\n"
            f"The same as a pytest test: pytest {files[0]}"
        )
    return 1 if failed else 0
