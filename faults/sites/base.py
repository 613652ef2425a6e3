"""What every site shares: patches that restore the exact original, the injector's
environment, and :class:`SiteFaults`, which applies a decided fault the same way at every
site (return None, raise, hang on the clock or in the cancel scope, shape the output, fail a
stream after n items).

A call on which a site's schedule does not fire costs one ``decide()`` and nothing else.
Hangs (``timeout``, ``latency``, ``stall``) wait in the current cancel scope
(``current_scope().wait(d)``) when there is one, so a deadline above them ends them with
``DeadlineExceeded``; otherwise on the injector's clock. A hang that nothing can end under a
:class:`VirtualClock` raises ``HangDetected`` naming the site. In async code they await on
the clock (``async with deadline`` cancels them).
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from faults.effects import context_overflow, make_exception, overflowing, resolve_raise_type
from faults.schedule import derive_rng
from faults.spec import SpecError, format_duration
from pytest_resilience.core.cancel import current_scope
from pytest_resilience.core.events import FaultInjected

if TYPE_CHECKING:
    import random
    from collections.abc import AsyncIterator, Callable, Iterator

    from faults.proxy import FaultProxy
    from faults.schedule import Decision, Schedule
    from faults.spec import Entry, Term
    from faults.target import Server
    from pytest_resilience.core.clock import Clock
    from pytest_resilience.core.journal import Journal

__all__ = [
    "SOURCE",
    "Cleanup",
    "Env",
    "Outputs",
    "Patch",
    "Restorer",
    "Route",
    "SiteFaults",
    "after_of",
    "check_terms",
    "close_source",
    "identity",
    "seconds_of",
]

#: How the daemon.* sites reach the traffic: hooks in the HTTP clients of this process, or
#: the fault proxy on the wire (any client, any process, in real time).
Route = Literal["hooks", "wire"]

#: The ``source`` of the FaultInjected events the injector writes (replay reads only these).
SOURCE = "faults"

AFTER_KINDS = frozenset({"stall", "truncate", "lost"})
STREAM_KINDS = frozenset({"stall", "truncate"})


class Restorer:
    """Something :func:`install` did that ``restore()`` undoes."""

    def restore(self) -> None:
        raise NotImplementedError


class Patch(Restorer):
    """``owner.name`` replaced by ``replacement``; ``restore()`` puts back the exact original
    object (or deletes the attribute when the owner only inherited it)."""

    def __init__(self, owner: Any, name: str, replacement: object) -> None:
        self.owner, self.name, self.replacement = owner, name, replacement
        self.own = name in vars(owner)
        self.original = vars(owner)[name] if self.own else None
        setattr(owner, name, replacement)

    def restore(self) -> None:
        if self.own:
            setattr(self.owner, self.name, self.original)
        else:
            delattr(self.owner, self.name)

    def __repr__(self) -> str:
        return f"<Patch {getattr(self.owner, '__name__', self.owner)}.{self.name}>"


class Cleanup(Restorer):
    """Calls ``undo`` on restore."""

    def __init__(self, undo: Callable[[], None]) -> None:
        self.undo = undo

    def restore(self) -> None:
        self.undo()


@dataclass(eq=False)
class Env:
    """What the sites need from the injector: the clock, the journal that receives the
    ``FaultInjected`` events, the seed and scope (for latency jitter), the daemon and proxy,
    and the list of fired decisions."""

    clock: Clock
    journal: Journal
    seed: int | str = 0
    scope: str = ""
    daemon: Server | None = None
    proxy: FaultProxy | None = None
    route: Route = "hooks"

    def __post_init__(self) -> None:
        self.decisions: list[tuple[str, Decision]] = []

    def record(self, site: str, decision: Decision) -> None:
        self.decisions.append((site, decision))
        event = FaultInjected(
            time=self.clock.now(),
            source=SOURCE,
            site=site,
            fault=decision.term.action,
            call=decision.call,
        )
        self.journal.append(event)


def _running_trio() -> Any:
    """The trio module when the caller runs under trio rather than asyncio, else None."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        trio = sys.modules.get("trio")
        if trio is not None:
            try:
                trio.lowlevel.current_task()
            except RuntimeError:
                return None
            return trio
    return None


def identity(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Outputs:
    """What the output-shaping kinds mean at one site."""

    oom: Callable[[], BaseException] = MemoryError
    timed_out: Callable[[str, float], BaseException] = lambda site, seconds: TimeoutError(
        f"fault injected at {site}: no answer within {format_duration(seconds)}"
    )
    corrupt: Callable[[Any], Any] = identity
    nan: Callable[[Any], Any] = identity
    lost: Callable[[str, int], BaseException] = lambda site, n: ConnectionResetError(
        f"fault injected at {site}: connection lost after {n} chunks"
    )
    #: ``overflow``: the context-window error, from the call's (args, kwargs).
    overflow: Callable[[Any, Any], BaseException] = lambda args, kwargs: context_overflow(
        overflowing(None, 512), 512
    )


class SiteFaults:
    """One site's schedule, and the kinds applied the same way at every site."""

    __slots__ = ("_rng", "decide", "env", "name", "out", "schedule")

    def __init__(self, name: str, schedule: Schedule, env: Env, out: Outputs) -> None:
        self.name, self.schedule, self.env, self.out = name, schedule, env, out
        self.decide = schedule.decide
        self._rng: random.Random | None = None

    def fire(self, decision: Decision) -> None:
        self.env.record(self.name, decision)

    def exception(self, term: Term) -> BaseException:
        message = term.arg("message")
        return make_exception(
            str(term.arg("type")), None if message is None else str(message), site=self.name
        )

    def delay(self, term: Term) -> float:
        """The latency's duration, with its jitter drawn from a generator of the site's own."""
        base, jitter = seconds_of(term, "duration"), seconds_of(term, "jitter")
        if not jitter:
            return base
        if self._rng is None:
            self._rng = derive_rng(self.env.seed, self.env.scope, f"{self.name}#latency")
        return max(0.0, base + self._rng.uniform(-jitter, jitter))

    def _what(self, kind: str) -> str:
        return f"the injected {kind} at {self.name}, which no timeout or deadline guards,"

    def hang(self, seconds: float, kind: str) -> None:
        """Wait ``seconds`` (inf: forever) in the current cancel scope, else on the clock."""
        __tracebackhide__ = True
        forever = math.isinf(seconds)
        scope = current_scope()
        if scope is not None:
            scope.wait(None if forever else seconds, what=self._what(kind))
        elif forever:
            self.env.clock.wait(threading.Event(), None, what=self._what(kind))
        else:
            self.env.clock.sleep(seconds)

    async def ahang(self, seconds: float, kind: str) -> None:
        """The async hang: on the clock (a cancelled task ends it); forever: until cancelled.
        Under trio (anyio's trio backend), on trio's own clock: ``trio.testing.MockClock``
        with autojump makes it instant there, as the virtual clock does under asyncio."""
        __tracebackhide__ = True
        trio = _running_trio()
        if trio is not None:
            await (trio.sleep_forever() if math.isinf(seconds) else trio.sleep(seconds))
            return
        if not math.isinf(seconds):
            await self.env.clock.asleep(seconds)
            return
        task = asyncio.current_task()
        name = task.get_name() if task is not None else ""
        if task is not None:  # a hang report on a virtual loop names the task: name the site
            task.set_name(f"{name} (hung in {self._what(kind).rstrip(',')})")
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            if task is not None:
                task.set_name(name)

    # ------------------------------------------------------------------ calls

    def call(self, d: Decision, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Apply the fault ``d`` to one call of ``fn``."""
        __tracebackhide__ = True
        self.fire(d)
        term, kind = d.term, d.term.kind
        if kind == "none":
            return None
        if kind == "raise":
            raise self.exception(term)
        if kind == "oom":
            raise self.out.oom()
        if kind == "overflow":
            raise self.out.overflow(args, kwargs)
        if kind == "timeout":
            seconds = seconds_of(term, "duration")
            self.hang(seconds, "timeout")
            raise self.out.timed_out(self.name, seconds)
        if kind == "latency":
            self.hang(self.delay(term), "latency")
        result = fn(*args, **kwargs)
        if kind == "corrupt":
            return self.out.corrupt(result)
        if kind == "nan":
            return self.out.nan(result)
        return result

    async def acall(self, d: Decision, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """:meth:`call` for a coroutine function."""
        __tracebackhide__ = True
        self.fire(d)
        term, kind = d.term, d.term.kind
        if kind == "none":
            return None
        if kind == "raise":
            raise self.exception(term)
        if kind == "oom":
            raise self.out.oom()
        if kind == "overflow":
            raise self.out.overflow(args, kwargs)
        if kind == "timeout":
            seconds = seconds_of(term, "duration")
            await self.ahang(seconds, "timeout")
            raise self.out.timed_out(self.name, seconds)
        if kind == "latency":
            await self.ahang(self.delay(term), "latency")
        result = await fn(*args, **kwargs)
        if kind == "corrupt":
            return self.out.corrupt(result)
        return result

    def stream(self, d: Decision, it: Iterator[Any]) -> Iterator[Any]:
        """The items of ``it`` with the fault ``d`` applied (already recorded); closes ``it``."""
        __tracebackhide__ = True
        term, kind = d.term, d.term.kind
        after = after_of(term) if kind in AFTER_KINDS else -1
        try:
            if kind == "none":
                return
            if kind in ("raise", "oom", "overflow", "timeout"):
                raise self._failure(d)
            n = 0
            while True:
                if n == after:
                    after = -1
                    if kind == "truncate":
                        return
                    if kind == "lost":
                        raise self.out.lost(self.name, n)
                    self.hang(seconds_of(term, "for"), "stall")  # kind == "stall"
                if kind == "latency":
                    self.hang(self.delay(term), "latency")
                try:
                    item = next(it)
                except StopIteration:
                    return
                n += 1
                yield self.out.corrupt(item) if kind == "corrupt" else item
        finally:
            close_source(it)

    async def astream(self, d: Decision, it: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """:meth:`stream` for an async iterator."""
        __tracebackhide__ = True
        term, kind = d.term, d.term.kind
        after = after_of(term) if kind in AFTER_KINDS else -1
        try:
            if kind == "none":
                return
            if kind == "timeout":
                seconds = seconds_of(term, "duration")
                await self.ahang(seconds, "timeout")
                raise self.out.timed_out(self.name, seconds)
            if kind in ("raise", "oom", "overflow"):
                raise self._failure(d)
            n = 0
            while True:
                if n == after:
                    after = -1
                    if kind == "truncate":
                        return
                    if kind == "lost":
                        raise self.out.lost(self.name, n)
                    await self.ahang(seconds_of(term, "for"), "stall")
                if kind == "latency":
                    await self.ahang(self.delay(term), "latency")
                try:
                    item = await anext(it)
                except StopAsyncIteration:
                    return
                n += 1
                yield self.out.corrupt(item) if kind == "corrupt" else item
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()

    def _failure(self, d: Decision) -> BaseException:
        """The exception a failing stream raises at its first item (timeout hangs first)."""
        __tracebackhide__ = True
        term = d.term
        if term.kind == "raise":
            return self.exception(term)
        if term.kind == "oom":
            return self.out.oom()
        if term.kind == "overflow":
            return self.out.overflow((), {})
        seconds = seconds_of(term, "duration")  # timeout
        self.hang(seconds, "timeout")
        return self.out.timed_out(self.name, seconds)


def seconds_of(term: Term, name: str) -> float:
    """A duration argument of ``term`` in seconds (0 when it has none)."""
    value = term.arg(name)
    return float(value) if isinstance(value, int | float) else 0.0


def after_of(term: Term) -> int:
    """The ``after=`` argument of ``term`` (0 when it has none)."""
    value = term.arg("after")
    return value if isinstance(value, int) else 0


def close_source(it: object) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def check_terms(entry: Entry) -> None:
    """Resolve the exception types of ``raise`` terms now, so a bad dotted path (or one to a
    class that ``raise`` refuses, such as a ``BaseException`` that is not an ``Exception``)
    fails at install time (SpecError, the caret under the type's name), never in the middle
    of the test."""
    for term in entry.chain:
        if term.kind == "raise":
            try:
                resolve_raise_type(str(term.arg("type")))
            except SpecError as exc:
                text, shown = str(entry), str(term)
                column = text.find(shown) + shown.index("(") + 1 + exc.column
                raise SpecError(exc.message, text, column, suggestion=exc.suggestion) from exc
