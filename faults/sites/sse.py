"""The answer of a daemon.* request, event by event: a client's body re-cut into whole SSE
events, with the daemon.stream and daemon.process faults decided for it applied.

:meth:`~faults.sites.daemon.DaemonSites.begin` and ``stream_plan`` decide what happens to
one answer's body (a :class:`Plan`); every client family hands the body it reads to
:func:`events` or :func:`aevents`, with its own exception types (:class:`Errors`), and
reads what they yield instead: ``stall`` holds the next event back on the clock,
``truncate`` ends the body with ``data: [DONE]`` after n chunks (a clean end), ``error``
ends it after n chunks with an in-band error event (``data: {"error": {...}}``), as an
OpenAI-compatible server reports a failure after its answer began, ``overflow`` ends it
before the first event, as the daemon's answer to a streamed prompt that overflows, ``corrupt``
makes each chunk's data invalid JSON, and ``lost(after=n)`` kills the daemon after n
chunks (the client reads the real loss) or resets the connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from faults.effects import corrupt_json
from faults.sites.base import close_source

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from faults.sites.base import SiteFaults
    from faults.sites.daemon import DaemonSites

__all__ = ["DONE", "Action", "Errors", "Plan", "aevents", "events"]

_SSE_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINES = re.compile(rb"\r\n|\n|\r")
DONE = b"data: [DONE]\n\n"


def _data(event: bytes) -> bytes | None:
    """The data of an SSE event that carries a chunk (None for comments, [DONE], ...)."""
    values = [
        line[5:].removeprefix(b" ") for line in _LINES.split(event) if line.startswith(b"data:")
    ]
    if not values:
        return None
    data = b"\n".join(values)
    return None if data.strip() == b"[DONE]" else data


def _corrupt_event(event: bytes) -> bytes:
    data = _data(event) or b""
    return b"data: " + corrupt_json(data.decode("utf-8", "replace")).encode() + b"\n\n"


class _Splitter:
    """Cuts a byte stream into whole SSE events (each with its blank line)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        found = []
        while m := _SSE_END.search(self.buffer):
            found.append(self.buffer[: m.end()])
            self.buffer = self.buffer[m.end() :]
        return found


@dataclass(slots=True)
class Action:
    after: int  # before the chunk numbered after+1 is delivered
    kind: str  # stall, end, kill, reset
    faults: SiteFaults
    seconds: float = 0.0
    event: bytes = b""  # end: the last event of the body ([DONE], an error), if any


class Plan:
    """What happens to one answer's body."""

    def __init__(self, sites: DaemonSites) -> None:
        self.sites = sites
        self.actions: list[Action] = []
        self.corrupt = False
        self.read_timeout: float | None = None  # the client's own: it ends a longer stall

    def due(self, n: int) -> list[Action]:
        return [a for a in self.actions if a.after == n]

    @property
    def empty(self) -> bool:
        return not self.actions and not self.corrupt


@dataclass(frozen=True, slots=True)
class Errors:
    """A client family's own errors for a connection that dies while the answer is read.

    ``reset()`` is what it raises for a connection reset by the peer, ``cut()`` for a body
    that ends before it is complete, and ``transport`` the exception types its reads raise
    (caught while draining the socket of a killed daemon, to hand the client its own).
    ``timeout()``, when given, is what it raises for a read that waits past its read
    timeout (a ``stall`` longer than the plan's ``read_timeout`` ends with it).
    """

    reset: Callable[[], BaseException]
    cut: Callable[[], BaseException]
    transport: tuple[type[BaseException], ...]
    timeout: Callable[[], BaseException] | None = None


def _stall(plan: Plan, action: Action, errors: Errors) -> tuple[float, BaseException | None]:
    """How long a stall hangs, and what the client raises after it: a stall longer than the
    client's own read timeout ends there, with the client's read timeout error."""
    limit = plan.read_timeout
    if limit is not None and limit < action.seconds and errors.timeout is not None:
        return limit, errors.timeout()
    return action.seconds, None


def _lose(plan: Plan, action: Action, it: Iterator[bytes], errors: Errors) -> BaseException:
    if action.kind == "reset":
        close_source(it)
        return errors.reset()
    if plan.sites.kill_now():
        try:  # read what the dead daemon's socket still holds, up to the real failure
            for _ in it:
                pass
        except errors.transport as exc:
            return exc
    return errors.cut()


async def _alose(
    plan: Plan, action: Action, it: AsyncIterator[bytes], errors: Errors
) -> BaseException:
    if action.kind == "reset":
        return errors.reset()
    if plan.sites.kill_now():
        try:
            async for _ in it:
                pass
        except errors.transport as exc:
            return exc
    return errors.cut()


def events(plan: Plan, chunks: Iterator[bytes], errors: Errors) -> Iterator[bytes]:
    """The bytes of ``chunks`` re-cut into whole SSE events, with ``plan`` applied."""
    __tracebackhide__ = True
    splitter, n = _Splitter(), 0
    it = iter(chunks)
    try:
        for action in plan.due(-1):  # a reset due before the body: it has no chunks to count
            raise _lose(plan, action, it, errors)
        for data in it:
            for event in splitter.feed(data):
                if _data(event) is not None:
                    for action in plan.due(n):
                        if action.kind == "stall":
                            seconds, error = _stall(plan, action, errors)
                            action.faults.hang(seconds, "stall")
                            if error is not None:
                                raise error
                        elif action.kind == "end":
                            if action.event:
                                yield action.event
                            return
                        else:
                            raise _lose(plan, action, it, errors)
                    n += 1
                    yield _corrupt_event(event) if plan.corrupt else event
                    continue
                yield event
        if splitter.buffer:
            yield splitter.buffer
    finally:
        close_source(it)


async def aevents(plan: Plan, chunks: AsyncIterator[bytes], errors: Errors) -> AsyncIterator[bytes]:
    """:func:`events` for an async byte stream."""
    __tracebackhide__ = True
    splitter, n = _Splitter(), 0
    it = aiter(chunks)
    try:
        for action in plan.due(-1):
            raise await _alose(plan, action, it, errors)
        async for data in it:
            for event in splitter.feed(data):
                if _data(event) is not None:
                    for action in plan.due(n):
                        if action.kind == "stall":
                            seconds, error = _stall(plan, action, errors)
                            await action.faults.ahang(seconds, "stall")
                            if error is not None:
                                raise error
                        elif action.kind == "end":
                            if action.event:
                                yield action.event
                            return
                        else:
                            raise await _alose(plan, action, it, errors)
                    n += 1
                    yield _corrupt_event(event) if plan.corrupt else event
                    continue
                yield event
        if splitter.buffer:
            yield splitter.buffer
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
