"""The fault injector's benchmark: what an installed site costs when it does not fire, and
what parsing a spec costs.

Run it as a module (``python -m tests.bench.faults``), never as a script: a script's own
folder comes first on ``sys.path``, and this file is called ``faults``.

Rows
    ``bare``: a module-level function called directly: the unit of every ratio.
    ``wrapped, future @n``: the same function patched by ``py:`` with a term that has not
    fired yet (``@1000000000none``): the wrapper, one ``Schedule.decide()`` that looks at
    the term and passes.
    ``wrapped, spent``: patched with ``1*none`` after its one fault: ``decide()`` only counts.
    ``decide()``: the schedule alone, for reference.
    ``parse 20 entries``: ``faults.parse`` of a 20-entry spec (one entry per kind and site).

Method (as tests/bench/core.py): each subject runs in a tight loop of ``n`` calls, ``n``
calibrated to about ``target_ms``, timed with ``perf_counter_ns`` with the cyclic GC off;
rounds measure every subject in a seeded shuffled order. Times are minimums over rounds;
ratios are medians over rounds of subject / bare call of the same round.

Goal: a pass-through call of an installed site costs at most 10x a bare call.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any

import faults
from faults import Injector, parse

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["GOAL", "SPEC_20", "Report", "format_report", "main", "measure"]

#: The most a pass-through call of an installed site may cost, as a multiple of a bare call.
GOAL = 10.0

_HERE = "py:tests.bench.faults"

#: A 20-entry spec: every built-in site and py: targets, with most kinds and forms.
SPEC_20 = ";".join(
    [
        "llama.load=1*oom",
        "llama.generate=30%timeout(30s)->2*none",
        "llama.chat=@2corrupt->latency(500ms, 100ms)",
        "llama.stream=@1stall(after=5, for=2m)",
        "llama.embed=nan->@3+corrupt",
        "daemon.request=10%ratelimit(retry_after=2s)->refuse",
        "daemon.stream=@2lost(after=3)",
        "daemon.process=@4pause(1s)->@9restart",
        *(
            f"py:myapp.mod{i}:Client.ask=3*raise(ConnectionError, 'down {i}')->off"
            for i in range(6)
        ),
        *(f"py:myapp.util:f{i}=25%latency(1s)->1*truncate(after={i})" for i in range(6)),
    ]
)


def _target() -> int:
    return 1


def _future_target() -> int:
    return 1


@dataclass
class Report:
    """Per subject: nanoseconds per call (minimum over rounds) and ratios to a bare call."""

    rounds: int
    ns: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)

    def ratio(self, name: str) -> float:
        return statistics.median(self.ratios[name])


def _time(fn: Callable[[], Any], n: int) -> float:
    """Nanoseconds per call of ``fn`` over ``n`` calls (GC off)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in repeat(None, n):
            fn()
        return (time.perf_counter_ns() - start) / n
    finally:
        if enabled:
            gc.enable()


def _calibrate(fn: Callable[[], Any], target_ms: float) -> int:
    n = 1
    while True:
        took = _time(fn, n) * n / 1e6
        if took >= target_ms / 4 or n >= 1 << 24:
            return max(1, int(n * target_ms / max(took, 1e-3)))
        n *= 4


def measure(*, rounds: int = 7, target_ms: float = 50.0, seed: int = 0) -> Report:
    """Time every subject; the injections are installed only while measuring."""
    # The module py: patches (when run with -m, this code runs as __main__, another module).
    this = importlib.import_module("tests.bench.faults")
    spent = Injector(f"{_HERE}:_target=1*none")
    future = Injector(f"{_HERE}:_future_target=@1000000000none")
    schedule = faults.Schedule(parse("py:m:f=@1000000000none").entries[0].chain)
    bare = _target
    spec_text = SPEC_20
    subjects: dict[str, Callable[[], Any]] = {"bare": bare, "decide()": schedule.decide}
    report = Report(rounds)
    with spent, future:
        this._target()  # spend the one fault
        wrapped_spent, wrapped_future = this._target, this._future_target
        assert wrapped_spent is not bare
        assert wrapped_future() == 1
        assert wrapped_spent() == 1
        subjects |= {"wrapped, future @n": wrapped_future, "wrapped, spent": wrapped_spent}
        subjects["parse 20 entries"] = lambda: parse(spec_text)
        counts = {name: _calibrate(fn, target_ms) for name, fn in subjects.items()}
        report.ns = dict.fromkeys(subjects, float("inf"))  # the table keeps this order
        rng = random.Random(seed)
        for _ in range(rounds):
            order = list(subjects)
            rng.shuffle(order)
            got = {name: _time(subjects[name], counts[name]) for name in order}
            for name, ns in got.items():
                report.ns[name] = min(report.ns[name], ns)
                report.ratios.setdefault(name, []).append(ns / got["bare"])
    assert spent.calls(f"{_HERE}:_target") > 1  # the wrapper really ran
    return report


def format_report(report: Report) -> str:
    lines = [f"fault injector, {report.rounds} rounds (min ns/call; median ratio to bare call)"]
    for name, ns in report.ns.items():
        ratio = report.ratio(name)
        verdict = ""
        if name.startswith("wrapped"):
            verdict = f"  goal <={GOAL:g}x: {'ok' if ratio <= GOAL else 'MISSED'}"
        unit = f"{ns / 1000:9.1f} us" if ns >= 10_000 else f"{ns:9.1f} ns"
        lines.append(f"  {name:<20} {unit}  {ratio:8.1f}x{verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit status 1 if a pass-through row misses its goal."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.faults", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    report = measure(rounds=args.rounds, target_ms=args.target_ms)
    print(format_report(report))
    missed = [n for n in report.ns if n.startswith("wrapped") and report.ratio(n) > GOAL]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
