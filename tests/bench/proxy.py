"""What the fault proxy adds to a streamed completion from the real daemon, on loopback:
``python -m tests.bench.proxy [--runs 20] [--tokens 64]``.

Method
    One daemon (``llama_cpp.server`` over the built-in tiny model, one thread) and one
    pass-through :class:`~faults.proxy.FaultProxy` in front of it (no toxic). Two
    :class:`DaemonBackend` clients, one straight to the daemon and one through the proxy,
    each keeping its connection alive, as an application would. A round streams the same
    completion once each way, the order alternating per round so neither side always runs
    second; a few warm-up rounds are not counted. For every stream we time, with
    ``perf_counter``, the first chunk (from the call, request included) and the whole
    stream. The table shows median and p95 of each, direct and proxied, and the medians'
    difference. Real time is the point here: the proxy forwards real sockets.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field

from faults.proxy import FaultProxy
from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.daemon import DaemonBackend, DaemonProcess, ServerOptions
from pytest_resilience.backends.tiny import tiny_model_path

PROMPT = "Once upon a time"


@dataclass
class Samples:
    first: list[float] = field(default_factory=list)  # seconds to the first chunk
    total: list[float] = field(default_factory=list)  # seconds to the end of the stream


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def stream_once(backend: DaemonBackend, params: GenerationParams, into: Samples) -> str:
    started = time.perf_counter()
    stream = backend.stream(PROMPT, params)
    chunks = [next(stream)]
    into.first.append(time.perf_counter() - started)
    chunks.extend(stream)
    into.total.append(time.perf_counter() - started)
    return "".join(chunks)


def measure(runs: int, tokens: int, warmup: int = 3) -> tuple[Samples, Samples, int]:
    """(direct, proxied, chunks per stream)."""
    params = GenerationParams(max_tokens=tokens)
    direct, proxied = Samples(), Samples()
    with (
        DaemonProcess(tiny_model_path(), ServerOptions(n_threads=1)) as daemon,
        FaultProxy((daemon.host, daemon.port or 0)) as proxy,
        DaemonBackend(daemon.base_url) as straight,
        DaemonBackend(proxy.url) as through,
    ):
        chunks = len(list(straight.stream(PROMPT, params)))
        for i in range(warmup + runs):
            keep = i >= warmup
            pair = [(straight, direct), (through, proxied)]
            if i % 2:
                pair.reverse()
            texts = {
                stream_once(b, params, s if keep else Samples())  # warm-up: thrown away
                for b, s in pair
            }
            if len(texts) != 1:
                raise AssertionError(f"the proxied stream differs from the direct one: {texts}")
    return direct, proxied, chunks


def format_report(direct: Samples, proxied: Samples, chunks: int, runs: int) -> str:
    def ms(x: float) -> str:
        return f"{x * 1000:8.2f}"

    rows = [
        f"streamed completion, {chunks} chunks, {runs} runs each; milliseconds",
        f"{'':22}{'median':>8}{'p95':>9}   {'median':>8}{'p95':>9}   {'added':>8}",
        f"{'':22}{'direct':^17}   {'via proxy':^17}   {'(median)':>8}",
    ]
    for title, a, b in (
        ("time to first chunk", direct.first, proxied.first),
        ("whole stream", direct.total, proxied.total),
    ):
        added = statistics.median(b) - statistics.median(a)
        rows.append(
            f"{title:22}{ms(statistics.median(a))} {ms(p95(a))}   "
            f"{ms(statistics.median(b))} {ms(p95(b))}   {ms(added)}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20, help="measured streams each way (20)")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens per stream (64)")
    args = parser.parse_args(argv)
    direct, proxied, chunks = measure(args.runs, args.tokens)
    print(format_report(direct, proxied, chunks, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
