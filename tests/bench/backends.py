"""The backends benchmark: failover time of the resilient client, and what the streaming
guard and the client cost per token. ``python -m tests.bench.backends [--help]``.

Failover
    A real daemon (``llama_cpp.server`` with the tiny model) streams a long answer to a
    :class:`ResilientClient` whose in-process model is already loaded. After a few chunks the
    consumer SIGKILLs the daemon from inside its loop. Measured from just before the kill
    (``perf_counter``): the first token generated in process (the in-process stream's first
    chunk), and the first *new* chunk delivered to the consumer (after the in-process replay
    of the prefix the daemon had delivered). The kill includes reaping the child. The daemon
    is restarted between runs, outside the timing. Goal: first in-process token < 100 ms.

Throughput
    The same completion (``max_tokens`` tokens; the tiny model always runs to it) streamed
    by raw llama-cpp-python (``Llama.create_completion(stream=True)``), by
    :class:`LlamaBackend`, through a :class:`StreamGuard`, and through a
    :class:`ResilientClient` whose breaker is forced open (so every stream takes the
    in-process path, guard included). The variants run in interleaved rounds in a shuffled
    order; tokens/s are medians over rounds and the overhead is the median over rounds of
    the per-round ratio to raw llama-cpp-python. Informational rows: the daemon streamed by
    :class:`DaemonBackend` and through the client (daemon path). Goal: at most 3 % slower.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from typing import TYPE_CHECKING

from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.daemon import DaemonBackend, DaemonProcess, ServerOptions
from pytest_resilience.backends.llama import LlamaBackend
from pytest_resilience.backends.resilient import ResilientClient
from pytest_resilience.backends.tiny import tiny_model_path
from pytest_resilience.core.stream import StreamGuard

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from pytest_resilience.backends.base import TextStream

PROMPT = "Tell me a story"


class _FirstChunkTimer:
    """A backend wrapper that notes when its stream yields its first chunk."""

    def __init__(self, backend: LlamaBackend) -> None:
        self.backend = backend
        self.name = backend.name
        self.first_chunks: list[float] = []  # perf_counter() of each stream's first chunk

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str:
        return self.backend.generate(prompt, params)

    def stream(self, prompt: str, params: GenerationParams | None = None) -> TextStream:
        return _Timed(self, self.backend.stream(prompt, params))

    def embed(self, text: str) -> list[float]:
        return self.backend.embed(text)

    def close(self) -> None:
        self.backend.close()


class _Timed:
    def __init__(self, owner: _FirstChunkTimer, stream: TextStream) -> None:
        self._owner = owner
        self._stream = stream
        self._seen = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        chunk = next(self._stream)
        if not self._seen:
            self._seen = True
            self._owner.first_chunks.append(time.perf_counter())
        return chunk

    def close(self) -> None:
        self._stream.close()


def measure_failover(
    process: DaemonProcess, backend: LlamaBackend, runs: int, params: GenerationParams
) -> list[tuple[float, float, int]]:
    """(ms to the first in-process token, ms to the first new chunk, characters delivered
    by the daemon) for each run."""
    results = []
    timer = _FirstChunkTimer(backend)
    for _ in range(runs):
        if not process.alive:
            process.start()
        daemon = DaemonBackend(process.base_url)
        timer.first_chunks.clear()
        with ResilientClient(daemon, timer, process=process) as client:
            stream = client.stream(PROMPT, params)
            assert stream is not None
            killed_at = new_at = 0.0
            before = ""
            for n, _chunk in enumerate(stream, 1):
                if n == 5:
                    before = stream.text
                    killed_at = time.perf_counter()
                    process.kill()
                elif killed_at and stream.source == "direct" and not new_at:
                    new_at = time.perf_counter()
            assert stream.fell_back, "the daemon finished before it was killed"
            assert stream.text == backend.generate(PROMPT, params), "lost or repeated text"
        daemon.close()
        (first_at,) = timer.first_chunks
        results.append(((first_at - killed_at) * 1e3, (new_at - killed_at) * 1e3, len(before)))
    return results


def _drain(stream: Iterator[str] | None) -> None:
    assert stream is not None
    for _ in stream:
        pass


def measure_throughput(
    process: DaemonProcess, backend: LlamaBackend, rounds: int, params: GenerationParams
) -> dict[str, list[float]]:
    """Seconds per stream of every variant, one sample per round (interleaved, shuffled)."""
    llm = backend.llama
    guard = StreamGuard(first_token=60.0, idle=60.0)
    daemon = DaemonBackend(process.base_url)
    direct_only = ResilientClient(DaemonBackend(process.base_url), backend)
    direct_only.breaker.force_open()
    via_daemon = ResilientClient(daemon, backend)
    sampling = {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "seed": params.seed,
        "repeat_penalty": params.repeat_penalty,
    }
    variants: dict[str, Callable[[], None]] = {
        "llama-cpp-python": lambda: _drain(llm.create_completion(PROMPT, stream=True, **sampling)),
        "LlamaBackend": lambda: _drain(backend.stream(PROMPT, params)),
        "StreamGuard": lambda: _drain(guard.wrap(backend.stream(PROMPT, params))),
        "ResilientClient (in process)": lambda: _drain(direct_only.stream(PROMPT, params)),
        "DaemonBackend": lambda: _drain(daemon.stream(PROMPT, params)),
        "ResilientClient (daemon)": lambda: _drain(via_daemon.stream(PROMPT, params)),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    rng = random.Random(0)
    try:
        for fn in variants.values():
            fn()  # warm up
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                started = time.perf_counter()
                variants[name]()
                samples[name].append(time.perf_counter() - started)
    finally:
        direct_only.close()
        via_daemon.close()
        direct_only.daemon.close()
        daemon.close()
    return samples


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(
    failover: list[tuple[float, float, int]], throughput: dict[str, list[float]], tokens: int
) -> str:
    first = [f for f, _, _ in failover]
    new = [n for _, n, _ in failover]
    chars = [c for _, _, c in failover]
    lines = [
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load {'/'.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        f"Failover, SIGKILL mid-stream -> in process ({len(failover)} runs; the daemon had "
        f"delivered {min(chars)}-{max(chars)} characters)",
        f"  first in-process token : p50 {statistics.median(first):6.1f} ms   "
        f"max {max(first):6.1f} ms   (goal < 100 ms: {'pass' if max(first) < 100 else 'MISS'})",
        f"  runs (ms)              : {' '.join(f'{x:.1f}' for x in first)}",
        f"  first new chunk        : p50 {statistics.median(new):6.1f} ms   "
        f"max {max(new):6.1f} ms   (after replaying the delivered prefix)",
        "",
        f"Streaming throughput, {tokens} tokens per stream, {len(next(iter(throughput.values())))}"
        " interleaved rounds; tok/s: median; overhead: median of per-round ratios, then "
        "best/best",
    ]
    raw = throughput["llama-cpp-python"]
    daemon_raw = throughput["DaemonBackend"]
    for name, values in throughput.items():
        base = daemon_raw if "daemon" in name and name != "DaemonBackend" else raw
        ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
        of_mins = min(values) / min(base)
        rate = tokens / statistics.median(values)
        goal = ""
        if name in ("StreamGuard", "ResilientClient (in process)"):
            goal = f"(goal <= +3%: {'pass' if ratio <= 1.03 else 'MISS'})"
        elif name == "ResilientClient (daemon)":
            goal = "(vs DaemonBackend; info)"
        elif name == "DaemonBackend":
            goal = "(info)"
        lines.append(
            f"  {name:30} {rate:8.0f} tok/s  {100 * (ratio - 1):+6.2f}%  "
            f"{100 * (of_mins - 1):+6.2f}%  {goal}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Start a daemon, run both measurements, print the report. Needs llama-cpp-python."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="failover runs (10)")
    parser.add_argument("--rounds", type=int, default=9, help="throughput rounds (9)")
    parser.add_argument("--tokens", type=int, default=900, help="tokens per stream (900)")
    args = parser.parse_args(argv)
    params = GenerationParams(max_tokens=args.tokens)
    path = tiny_model_path()
    with (
        LlamaBackend(path, n_ctx=1024, seed=0, n_threads=1, name="tiny") as backend,
        DaemonProcess(path, ServerOptions(n_ctx=2048)) as process,
    ):
        failover = measure_failover(process, backend, args.runs, params)
        if not process.alive:
            process.start()
        throughput = measure_throughput(process, backend, args.rounds, params)
    print(report(failover, throughput, args.tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
