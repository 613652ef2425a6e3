"""What the daemon.* hooks cost the app's own traffic, in every hooked client family.

``python -m tests.bench.reach [--rounds 21] [--target-ms 15] [--events 50] [--clients httpx,...]
[--no-import]``

A local server on 127.0.0.1 (an asyncio server in a thread of its own, keep-alive, started
and stopped by the benchmark) answers ``POST /json`` with a small JSON body and ``POST /sse``
with a chunked ``text/event-stream`` of ``--events`` small ``data:`` events and ``data:
[DONE]``. Each client family sends to it as an app would, over one kept-alive client:
httpx and httpx2 (``Client.post``, ``Client.stream`` + ``iter_lines``), requests
(``Session.post``, ``iter_lines`` with ``stream=True``) and aiohttp (``ClientSession.post``,
``async for line in resp.content``). Every SSE answer is read to its end and checked whole.

Conditions (columns)
    ``baseline``: no injection installed: the unit of every ratio.
    ``elsewhere``: ``daemon.request=refuse`` with ``daemon=Target("http://127.0.0.1:9")``:
    the hooks are installed but the traffic is not the target's: the pass-through cost every
    unrelated request pays.
    ``off``: ``daemon.request=@1000000refuse;daemon.stream=@1000000truncate(after=1)``
    targeting the server: each request is the daemon's and decided, and no fault fires.
    ``re-cut`` (SSE only): ``daemon.stream=truncate(after=1000000)`` targeting the server:
    the stream fault fires on every answer but never cuts a 50-event body, so the body is
    re-cut into whole SSE events and served again: the cost of a wrapped answer (with one
    ``FaultInjected`` event recorded per answer). Under ``off`` the stream site decides,
    before the body is read, that nothing fires, and the body is not wrapped at all: a
    schedule that never fires never pays for the re-cut.

After each block the injection's counts are checked (``elsewhere``: no daemon request seen,
every request counted as another server's; ``off``: one decision per request, none fired;
``re-cut``: one stream fault per answer), so a hook that is not reached fails loudly instead
of measuring nothing.

Method
    For each family and answer, a block of ``n`` requests (``n`` calibrated on the baseline
    to about ``--target-ms``) is timed per condition, the cyclic GC off, the injection
    installed just around the block; each round measures the conditions in a seeded shuffled
    order, back to back. Two clocks: wall time (``perf_counter_ns``) and the client thread's
    CPU time (``thread_time_ns``: the server's thread, waits and other processes do not count
    there, so it is the steadier of the two on a busy machine). Figures are medians over
    rounds: the baseline's microseconds per request, and each condition's difference and
    ratio to the baseline of the same round (the machine is shared: only same-round
    comparisons are trusted). Many short rounds beat a few long ones here.

Also
    ``DaemonSites.begin`` alone, called in a tight loop (ns per call, minimum over rounds, and
    median ratio to a bare call of a two-argument function): for an address that is not the
    target's (the pass-through), and for the target's with the ``off`` schedule. And the
    plugin's import time after pytest, measured by :func:`tests.bench.plugin.import_cost_ms`.

Nothing here has a goal: the exit status is 0 unless a check fails (then it raises).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import random
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Literal, NamedTuple, cast

import aiohttp
import httpx
import httpx2
import requests

import faults
from faults import Injector, Target

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from types import ModuleType

__all__ = [
    "CONDITIONS",
    "LocalServer",
    "Report",
    "format_report",
    "main",
    "measure",
    "measure_begin",
]

HOST = "127.0.0.1"
#: An address nobody is served at here (the discard port): the target of ``elsewhere``.
ELSEWHERE_URL = f"http://{HOST}:9"
#: condition -> (spec, whether it targets the local server); baseline installs nothing.
CONDITIONS: dict[str, tuple[str, bool] | None] = {
    "baseline": None,
    "elsewhere": ("daemon.request=refuse", False),
    "off": ("daemon.request=@1000000refuse;daemon.stream=@1000000truncate(after=1)", True),
    "re-cut": ("daemon.stream=truncate(after=1000000)", True),
}
ANSWERS = ("json", "sse")
FAMILIES = ("httpx", "httpx2", "requests", "aiohttp")
PAYLOAD: dict[str, str | int] = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 16}
JSON_BODY = (
    b'{"id":"cmpl-1","object":"text_completion","model":"tiny","choices":[{"index":0,'
    b'"text":" there was a tiny model","finish_reason":"stop"}],"usage":{"prompt_tokens":4,'
    b'"completion_tokens":6,"total_tokens":10}}'
)
_LENGTH = re.compile(rb"^content-length:[ \t]*(\d+)", re.I | re.M)


# ============================================================================ the server


def sse_events(events: int) -> list[bytes]:
    """The SSE answer's events: ``events`` small completion chunks, then ``[DONE]``."""
    chunk = (
        b'data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,'
        b'"text":" tok%d","finish_reason":null}]}\n\n'
    )
    return [chunk % i for i in range(events)] + [b"data: [DONE]\n\n"]


def _answers(events: int) -> dict[bytes, bytes]:
    """The whole HTTP answer (head and body) for each path."""
    json_head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(JSON_BODY)
    )
    sse_head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in sse_events(events))
    return {b"/json": json_head + JSON_BODY, b"/sse": sse_head + chunks + b"0\r\n\r\n"}


_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class _Answering(asyncio.Protocol):
    """One kept-alive connection: answers each whole request by its path."""

    def __init__(self, answers: dict[bytes, bytes], open_: set[asyncio.Transport]) -> None:
        self.answers, self.open = answers, open_
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        self.open.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.open.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end]
            length = _LENGTH.search(head)
            size = end + 4 + (int(length.group(1)) if length else 0)
            if len(self.buffer) < size:
                return
            self.buffer = self.buffer[size:]
            path = head.split(b" ", 2)[1].split(b"?", 1)[0]
            assert self.transport is not None
            self.transport.write(self.answers.get(path, _NOT_FOUND))


class LocalServer:
    """The answering server, in a thread with its own event loop: ``with LocalServer(50) as
    server: server.url``. Leaving the block (also on error) stops it and closes every
    connection still open."""

    def __init__(self, events: int) -> None:
        self.answers = _answers(events)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._open: set[asyncio.Transport] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> LocalServer:
        self._thread = threading.Thread(target=self._serve, name="bench-reach-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0):
            self.close()
            raise RuntimeError("the local server did not start within 10 s")
        if self._error is not None:
            self.close()
            raise RuntimeError("the local server did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            server = loop.run_until_complete(
                loop.create_server(lambda: _Answering(self.answers, self._open), HOST, 0)
            )
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for transport in list(self._open):
                transport.abort()
            loop.run_until_complete(server.wait_closed())
            loop.run_until_complete(asyncio.sleep(0))  # let the aborted transports finish
            loop.close()

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if thread is None:
            return
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        self._thread = None


# ============================================================================ the clients

Clock = Literal["wall", "cpu"]


class Sample(NamedTuple):
    """Nanoseconds per request: on the wall clock, and of the client thread's CPU (the
    server runs in another thread; neither waits nor other processes count there)."""

    wall: float
    cpu: float

    def on(self, clock: Clock) -> float:
        return self.wall if clock == "wall" else self.cpu


def _timed(once: Callable[[], object], n: int) -> Sample:
    """Wall and this thread's CPU nanoseconds per call of ``once`` over ``n`` calls (GC off)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        cpu, start = time.thread_time_ns(), time.perf_counter_ns()
        for _ in repeat(None, n):
            once()
        return Sample((time.perf_counter_ns() - start) / n, (time.thread_time_ns() - cpu) / n)
    finally:
        if enabled:
            gc.enable()


async def _atimed(once: Callable[[], Awaitable[object]], n: int) -> Sample:
    enabled = gc.isenabled()
    gc.disable()
    try:
        cpu, start = time.thread_time_ns(), time.perf_counter_ns()
        for _ in repeat(None, n):
            await once()
        return Sample((time.perf_counter_ns() - start) / n, (time.thread_time_ns() - cpu) / n)
    finally:
        if enabled:
            gc.enable()


def _check_events(got: int, events: int) -> None:
    if got != events + 1:
        raise AssertionError(f"an SSE answer had {got} data lines, not {events + 1}")


class Driver:
    """One client family sending to the server: ``block(answer, n)`` is nanoseconds per
    request over ``n`` requests."""

    name = ""

    def block(self, answer: str, n: int) -> Sample:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class HttpxDriver(Driver):
    """httpx or httpx2 (the same API): one ``Client``."""

    def __init__(self, hx: ModuleType, url: str, events: int) -> None:
        self.name = hx.__name__
        self.client: httpx.Client = hx.Client(trust_env=False)
        self.json_url, self.sse_url, self.events = f"{url}/json", f"{url}/sse", events

    def json_once(self) -> None:
        self.client.post(self.json_url, json=PAYLOAD).raise_for_status()

    def sse_once(self) -> None:
        with self.client.stream("POST", self.sse_url, json=PAYLOAD) as response:
            response.raise_for_status()
            got = sum(1 for line in response.iter_lines() if line.startswith("data:"))
        _check_events(got, self.events)

    def block(self, answer: str, n: int) -> Sample:
        return _timed(self.json_once if answer == "json" else self.sse_once, n)

    def close(self) -> None:
        self.client.close()


class RequestsDriver(Driver):
    """requests: one ``Session`` (urllib3 underneath)."""

    name = "requests"

    def __init__(self, url: str, events: int) -> None:
        self.session = requests.Session()
        self.session.trust_env = False
        self.json_url, self.sse_url, self.events = f"{url}/json", f"{url}/sse", events

    def json_once(self) -> None:
        self.session.post(self.json_url, json=PAYLOAD).raise_for_status()

    def sse_once(self) -> None:
        with self.session.post(self.sse_url, json=PAYLOAD, stream=True) as response:
            response.raise_for_status()
            got = sum(1 for line in response.iter_lines() if line.startswith(b"data:"))
        _check_events(got, self.events)

    def block(self, answer: str, n: int) -> Sample:
        return _timed(self.json_once if answer == "json" else self.sse_once, n)

    def close(self) -> None:
        self.session.close()


class AiohttpDriver(Driver):
    """aiohttp: one ``ClientSession`` on an event loop kept for the whole benchmark."""

    name = "aiohttp"

    def __init__(self, url: str, events: int) -> None:
        self.runner = asyncio.Runner()
        self.json_url, self.sse_url, self.events = f"{url}/json", f"{url}/sse", events
        try:
            self.session = self.runner.run(self._open())
        except BaseException:
            self.runner.close()
            raise

    @staticmethod
    async def _open() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(trust_env=False)

    async def json_once(self) -> None:
        async with self.session.post(self.json_url, json=PAYLOAD) as response:
            response.raise_for_status()
            await response.read()

    async def sse_once(self) -> None:
        async with self.session.post(self.sse_url, json=PAYLOAD) as response:
            response.raise_for_status()
            got = 0
            async for line in response.content:
                got += line.startswith(b"data:")
        _check_events(got, self.events)

    def block(self, answer: str, n: int) -> Sample:
        once = self.json_once if answer == "json" else self.sse_once
        return self.runner.run(_atimed(once, n))

    def close(self) -> None:
        try:
            self.runner.run(self.session.close())
        finally:
            self.runner.close()


def make_driver(family: str, url: str, events: int) -> Driver:
    if family == "requests":
        return RequestsDriver(url, events)
    if family == "aiohttp":
        return AiohttpDriver(url, events)
    return HttpxDriver({"httpx": httpx, "httpx2": httpx2}[family], url, events)


# ============================================================================ measuring


def conditions_for(answer: str) -> list[str]:
    return [c for c in CONDITIONS if answer == "sse" or c != "re-cut"]


def injector_for(condition: str, url: str) -> Injector | None:
    entry = CONDITIONS[condition]
    if entry is None:
        return None
    spec, targeted = entry
    return faults.inject(spec, daemon=Target(url if targeted else ELSEWHERE_URL))


def _check(injector: Injector, condition: str, answer: str, n: int, port: int) -> None:
    """That the hooks saw the block's ``n`` requests as the condition says they should."""
    sites = injector._daemon_sites  # the hooks' own bookkeeping
    assert sites is not None, "no daemon.* sites were installed"
    if condition == "elsewhere":
        passed = (injector.calls("daemon.request"), sites.elsewhere[f"{HOST}:{port}"])
        if passed != (0, n):
            raise AssertionError(f"elsewhere: {passed} (daemon requests, others) for {n}")
    elif condition == "off":
        streams = n if answer == "sse" else 0
        seen = (
            injector.calls("daemon.request"),
            injector.calls("daemon.stream"),
            len(injector.decisions),
        )
        if seen != (n, streams, 0):
            raise AssertionError(f"off: {seen} (requests, answers, fired) for {n}")
    elif condition == "re-cut" and injector.injected("daemon.stream") != n:
        fired = injector.injected("daemon.stream")
        raise AssertionError(f"re-cut: {fired} stream faults for {n} answers")


def run_block(driver: Driver, answer: str, condition: str, n: int, server: LocalServer) -> Sample:
    """Nanoseconds per request of ``n`` requests under ``condition``."""
    injector = injector_for(condition, server.url)
    if injector is None:
        return driver.block(answer, n)
    with injector:
        sample = driver.block(answer, n)
    _check(injector, condition, answer, n, server.port)
    return sample


Key = tuple[str, str]  # (family, answer)


@dataclass
class Report:
    """Per (family, answer): a sample per request of each condition, one a round."""

    rounds: int
    events: int
    samples: dict[Key, dict[str, list[Sample]]] = field(default_factory=dict)
    begin: dict[str, tuple[float, float]] = field(default_factory=dict)  # ns, ratio to bare
    import_ms: float | None = None

    def _pairs(self, key: Key, condition: str, clock: Clock) -> list[tuple[float, float]]:
        row = self.samples[key]
        return [
            (c.on(clock), b.on(clock)) for c, b in zip(row[condition], row["baseline"], strict=True)
        ]

    def base_us(self, key: Key, clock: Clock = "wall") -> float:
        return statistics.median(b.on(clock) for b in self.samples[key]["baseline"]) / 1000

    def delta_us(self, key: Key, condition: str, clock: Clock = "wall") -> float:
        return statistics.median(c - b for c, b in self._pairs(key, condition, clock)) / 1000

    def ratio(self, key: Key, condition: str, clock: Clock = "wall") -> float:
        return statistics.median(c / b for c, b in self._pairs(key, condition, clock))


def _calibrate(driver: Driver, answer: str, target_ms: float) -> int:
    """Requests in a block of about ``target_ms`` (at least 5), from a warm baseline."""
    driver.block(answer, 5)  # connect, warm the pool
    ns = driver.block(answer, 10).wall
    return max(5, round(target_ms * 1e6 / ns))


def measure(
    *,
    rounds: int = 21,
    target_ms: float = 15.0,
    events: int = 50,
    families: Sequence[str] = FAMILIES,
    seed: int = 0,
) -> Report:
    """Time every family, answer and condition against a local server started here."""
    report = Report(rounds, events)
    rng = random.Random(seed)
    with LocalServer(events) as server:
        drivers: list[Driver] = []
        try:
            drivers.extend(make_driver(family, server.url, events) for family in families)
            counts = {
                (d.name, answer): _calibrate(d, answer, target_ms)
                for d in drivers
                for answer in ANSWERS
            }
            for d in drivers:  # warm each condition's path once, and check it
                for answer in ANSWERS:
                    for condition in conditions_for(answer):
                        run_block(d, answer, condition, 3, server)
            for key in counts:
                report.samples[key] = {c: [] for c in conditions_for(key[1])}
            for _ in range(rounds):
                for d in drivers:
                    for answer in ANSWERS:
                        order = conditions_for(answer)
                        rng.shuffle(order)
                        n = counts[d.name, answer]
                        for condition in order:
                            sample = run_block(d, answer, condition, n, server)
                            report.samples[d.name, answer][condition].append(sample)
            report.begin = measure_begin(server.url, server.port, rounds=rounds)
        finally:
            for d in drivers:
                d.close()
    return report


# ============================================================================ begin() alone


def _bare(host: str | None, port: int | None) -> None:
    return None


def _loop_ns(fn: Callable[[], object], n: int) -> float:
    return _timed(fn, n).wall


def _count_for(fn: Callable[[], object], target_ms: float) -> int:
    n = 1
    while True:
        took = _loop_ns(fn, n) * n / 1e6
        if took >= target_ms / 4 or n >= 1 << 22:
            return max(1, int(n * target_ms / max(took, 1e-3)))
        n *= 4


def measure_begin(
    url: str, port: int, *, rounds: int = 15, target_ms: float = 10.0
) -> dict[str, tuple[float, float]]:
    """``DaemonSites.begin`` alone: ns per call (minimum over rounds) and the median ratio
    to a bare call, for an address that is not the target's and for the target's (``off``)."""
    elsewhere = injector_for("elsewhere", url)
    targeted = injector_for("off", url)
    assert elsewhere is not None
    assert targeted is not None
    subjects: dict[str, Callable[[], object]] = {"bare call": functools.partial(_bare, HOST, port)}
    with elsewhere:
        sites = elsewhere._daemon_sites
        assert sites is not None
        subjects["begin(), not the target"] = functools.partial(sites.begin, HOST, port)
        assert subjects["begin(), not the target"]() is None
        with targeted:
            on = targeted._daemon_sites
            assert on is not None
            subjects["begin(), the target, off"] = functools.partial(on.begin, HOST, port)
            counts = {name: _count_for(fn, target_ms) for name, fn in subjects.items()}
            best = dict.fromkeys(subjects, float("inf"))
            ratios: dict[str, list[float]] = {name: [] for name in subjects}
            rng = random.Random(1)
            for _ in range(rounds):
                order = list(subjects)
                rng.shuffle(order)
                got = {name: _loop_ns(subjects[name], counts[name]) for name in order}
                for name, ns in got.items():
                    best[name] = min(best[name], ns)
                    ratios[name].append(ns / got["bare call"])
    return {name: (best[name], statistics.median(ratios[name])) for name in subjects}


# ============================================================================ the report


def _cell(report: Report, key: Key, condition: str, clock: Clock) -> str:
    if condition not in report.samples[key]:
        return "-"
    delta, ratio = report.delta_us(key, condition, clock), report.ratio(key, condition, clock)
    return f"{delta:+.1f} us ({ratio:.2f}x)"


def _table(report: Report, clock: Clock) -> list[str]:
    others = [c for c in CONDITIONS if c != "baseline"]
    what = "wall time" if clock == "wall" else "client thread CPU time"
    lines = [
        f"{what}, median of {report.rounds} rounds: us/request for the baseline; for each "
        "condition + us/request and ratio to the same round's baseline",
        f"  {'client':<9}{'answer':<8}{'baseline':>11}" + "".join(f"{c:>21}" for c in others),
    ]
    for key in report.samples:
        family, answer = key
        shown = "json" if answer == "json" else f"sse/{report.events}"
        cells = "".join(f"{_cell(report, key, c, clock):>21}" for c in others)
        lines.append(f"  {family:<9}{shown:<8}{report.base_us(key, clock):>8.1f} us{cells}")
    return lines


def _summary(report: Report, family: str) -> str:
    j, s = (family, "json"), (family, "sse")

    def both(key: Key, condition: str, unit: str = "") -> str:
        wall, cpu = report.delta_us(key, condition), report.delta_us(key, condition, "cpu")
        ratio = report.ratio(key, condition)
        return f"{wall:+.1f} us{unit} ({ratio:.2f}x; cpu {cpu:+.1f} us)"

    return (
        f"  {family}: {both(j, 'elsewhere', '/request')} passing through; decided-but-off "
        f"{both(j, 'off')} on JSON, {both(s, 'off')} on SSE; SSE re-cut {both(s, 're-cut')} "
        f"per {report.events}-event answer"
    )


def format_report(report: Report) -> str:
    lines = [
        "daemon.* hooks on the app's own traffic (local server on 127.0.0.1; elsewhere: "
        "hooks installed, another target; off: targeted, decided, nothing fires; re-cut: "
        "SSE body re-cut into events)",
        *_table(report, "wall"),
        "",
        *_table(report, "cpu"),
        "",
        *(_summary(report, family) for family in dict.fromkeys(f for f, _ in report.samples)),
    ]
    if report.begin:
        lines += ["", "DaemonSites.begin alone (min ns/call; median ratio to a bare call)"]
        for name, (ns, ratio) in report.begin.items():
            lines.append(f"  {name:<26}{ns:8.1f} ns  {ratio:6.1f}x")
    if report.import_ms is not None:
        lines += [
            "",
            f"plugin import after pytest: {report.import_ms:.1f} ms "
            "(median of 5 fresh interpreters, -X importtime; tests.bench.plugin)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.reach",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument("--rounds", type=int, default=21, help="rounds (21)")
    parser.add_argument("--target-ms", type=float, default=15.0, help="ms per block (15)")
    parser.add_argument("--events", type=int, default=50, help="events per SSE answer (50)")
    parser.add_argument(
        "--clients", default=",".join(FAMILIES), help=f"families ({','.join(FAMILIES)})"
    )
    parser.add_argument("--no-import", action="store_true", help="skip the plugin import time")
    args = parser.parse_args(argv)
    families = [f for f in args.clients.split(",") if f]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown client families: {', '.join(sorted(unknown))}")
    report = measure(
        rounds=args.rounds, target_ms=args.target_ms, events=args.events, families=families
    )
    if not args.no_import:
        from tests.bench.plugin import import_cost_ms  # noqa: PLC0415

        report.import_ms = import_cost_ms()
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
