"""The world a scenario runs in: :class:`_World` builds what the target needs (the model
daemon and its fault proxy, the resilient client, the factory's backend, the backends of
other models, a callable's clock and journal, the breaker, degrader and fallback chain) and
its rollbacks take it all down again, each one even when another fails. The streams it hands
out are watched, so that the run can tell whether each source was closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from faults.effects import resolve_exception_type
from faults.scenario.callables import _context_args, _lookup, _signature
from faults.scenario.model import FAILURES
from faults.scenario.policies import _Policies
from faults.scenario.reading import ScenarioError, _line_of
from faults.scenario.schema import _kind
from pytest_resilience.core.clock import SystemClock, VirtualClock
from pytest_resilience.core.fallback import Fallback

if TYPE_CHECKING:
    import tempfile
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping

    from faults.proxy import FaultProxy
    from faults.scenario.model import Scenario, Step
    from pytest_resilience.backends.base import Backend, TextStream
    from pytest_resilience.backends.daemon import DaemonBackend, DaemonProcess
    from pytest_resilience.backends.resilient import ResilientClient
    from pytest_resilience.core.clock import Clock
    from pytest_resilience.core.journal import Journal

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TargetContext:
    """What a ``factory`` target receives: the model's path, the clock, the journal."""

    model_path: Path
    clock: Clock
    journal: Journal


def _model_path(name: str, base: Path) -> Path:
    from pytest_resilience.backends.tiny import TinyModelSpec, tiny_model_path  # noqa: PLC0415

    if name == "tiny":
        return tiny_model_path()
    if name == "tiny-small":
        return tiny_model_path(spec=TinyModelSpec(n_embd=32, n_layer=1, n_head=4, n_ff=64))
    if name == "gemma3-270m":
        from pytest_resilience.backends.gemma import gemma_model_path  # noqa: PLC0415

        return gemma_model_path()
    path = Path(name)
    return path if path.is_absolute() else base / path


class _World:
    """Everything a run builds, and the rollbacks that take it all down again."""

    def __init__(
        self,
        scenario: Scenario,
        clock: Clock,
        journal: Journal,
        seed: int,
        names: Mapping[str, type[BaseException]],
    ) -> None:
        self.scenario, self.clock, self.journal, self.seed = scenario, clock, journal, seed

        def resolve(name: str) -> type[BaseException]:
            found = names.get(name)
            return found if found is not None else resolve_exception_type(name)

        self.policies = _Policies(
            scenario.target, clock, journal, seed, scenario.path.name, resolve=resolve
        )
        self.target = scenario.target
        self.base = scenario.path.parent
        self.backends: dict[str, Backend] = {}
        self.daemon: DaemonProcess | None = None
        self.proxy: FaultProxy | None = None  # in front of the daemon, on the wire route
        self.daemon_backend: DaemonBackend | None = None
        self.client: ResilientClient | None = None
        self.factory_backend: Backend | None = None
        self.watched: list[_Watched] = []
        self.streams: list[_StreamRecord] = []
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        self.resumed = False
        self.job_killed = False  # a job's first run is killed once per scenario run
        self.context: dict[str, object] = {}  # a callable target's clock and journal
        # what a failed op raises: the defaults and the target's own errors
        extra = tuple(resolve(n) for n in scenario.target.errors)
        self.failures: tuple[type[BaseException], ...] = (*FAILURES, *extra)
        res, policies = scenario.resilience, self.policies
        self.breaker = policies.breaker(res["breaker"]) if "breaker" in res else None
        self.degrader = policies.degrader(res["degrade"]) if "degrade" in res else None
        self.fallback = self._fallback(res["fallback"]) if "fallback" in res else None

    # ----------------------------------------------------------------------- building

    def start(self) -> None:
        """Start the daemon and build the client; models load on first use."""
        target = self.target
        if target.has_daemon:
            from pytest_resilience.backends.daemon import (  # noqa: PLC0415
                DaemonBackend,
                DaemonProcess,
                ServerOptions,
            )

            embeds = any(s.op == "embed" for s in self.scenario.steps)
            options = ServerOptions(
                n_ctx=1024,
                n_threads=1,
                embedding=embeds,
                kv_overrides=("llama.pooling_type=int:1",) if embeds else (),
            )
            # The child runs in real time: its readiness polls must not jump a virtual clock.
            self.daemon = DaemonProcess(
                _model_path(target.model, self.base), options, clock=SystemClock()
            )
            self.daemon.start()
            if target.route == "wire":
                from faults.proxy import FaultProxy  # noqa: PLC0415

                assert self.daemon.port is not None  # started
                self.proxy = FaultProxy(upstream=(self.daemon.host, self.daemon.port)).start()
                self.daemon.front = self.proxy.url
            self.daemon_backend = DaemonBackend(self.daemon.base_url, clock=self.clock)
        if target.client == "resilient":
            self.client = self._resilient()
        if target.factory is not None:
            build = _lookup(target.factory)
            context = TargetContext(_model_path(target.model, self.base), self.clock, self.journal)
            self.factory_backend = self._checked_backend(build(context))
        if target.callable is not None:
            signature = _signature(_lookup(target.callable))
            given = {"clock": self.clock, "journal": self.journal}
            names = _context_args(signature) if signature is not None else []
            self.context = {n: given[n] for n in names}

    def _checked_backend(self, built: object) -> Backend:
        """What the factory built, if it is a backend for the scenario's steps: a ``name``,
        ``close()`` and the methods the steps call; else a :class:`ScenarioError` at the
        ``factory`` line, naming the factory (what it built is closed if it can be)."""
        scenario = self.scenario
        ops = {s.op for s in (*scenario.steps, scenario.steady_state) if s is not None}
        needed = ["close"]
        needed += [m for m in ("generate", "stream", "embed") if m in ops]
        if "job" in ops and "generate" not in needed:
            needed.append("generate")  # a job generates its parts
        missing = [f"{m}()" for m in needed if not callable(getattr(built, m, None))]
        if not isinstance(getattr(built, "name", None), str):
            missing.insert(0, "name (a string)")
        if not missing:
            return typing.cast("Backend", built)
        close = getattr(built, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
        plain = isinstance(built, bool | int | float | str | list | dict)
        what = _kind(built) if plain else f"a {type(built).__qualname__} object"
        what = "None" if built is None else what
        raise ScenarioError(
            str(scenario.path),
            _line_of(scenario.lines, ("target", "factory")),
            "target.factory",
            f"the factory {self.target.factory} returned {what}, which is not a backend: it "
            f"lacks {', '.join(missing)} (a Backend has a name, close(), and the generate(), "
            "stream() or embed() its steps call)",
        )

    def invoke(self, step: Step) -> object:
        """One call of the callable target with the step's arguments (copied: a call that
        changes them does not change the next); a coroutine is run to its end on an event
        loop of its own (under a virtual clock, one on the clock), a generator is read to
        its end: the answer is the list of its items."""
        assert self.target.callable is not None
        function = _lookup(self.target.callable)  # now: a py: fault on it is in place
        kwargs = {**self.context, **copy.deepcopy(dict(step.kwargs))}
        result = function(*copy.deepcopy(step.args), **kwargs)
        if inspect.isawaitable(result):
            return self._run_async(_awaited(result))
        if inspect.isasyncgen(result):
            return self._run_async(_collected(result))
        if inspect.isgenerator(result):
            return list(result)
        return result

    def _run_async(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if isinstance(self.clock, VirtualClock):
            return self.clock.run(coroutine)
        return asyncio.run(coroutine)

    def _resilient(self) -> ResilientClient:
        from pytest_resilience.backends.resilient import ResilientClient  # noqa: PLC0415

        assert self.daemon_backend is not None
        res = self.scenario.resilience
        degrade = res.get("degrade", {})
        cache = None
        if degrade.get("cache", False):
            from pytest_resilience.core.cache import ResponseCache  # noqa: PLC0415

            cache = ResponseCache(clock=self.clock, journal=self.journal)
        return ResilientClient(
            self.daemon_backend,
            lambda: self.model(self.target.model, daemon=False),
            breaker=self.breaker,
            retry=self.policies.retry(res.get("retry")),
            guard=self.policies.guard(res["stream"]) if "stream" in res else None,
            timeout=self.target.timeout,
            policy="never_fail" if self.target.policy == "never_fail" else "raise",
            process=self.daemon,
            cache=cache,
            static=degrade.get("static"),
            degrader=self.degrader,
            clock=self.clock,
            journal=self.journal,
        )

    def model(self, name: str, *, daemon: bool = True) -> Backend:
        """The backend of model ``name``: the target's own for its model, else a
        llama-cpp-python backend loaded on first use (a failed load is tried again)."""
        if name == self.target.model and daemon:
            if self.factory_backend is not None:
                return self.factory_backend
            if self.daemon_backend is not None:
                return self.daemon_backend
        backend = self.backends.get(name)
        if backend is None:
            from pytest_resilience.backends.llama import LlamaBackend  # noqa: PLC0415

            backend = LlamaBackend(_model_path(name, self.base), n_ctx=1024, n_threads=1, name=name)
            self.backends[name] = backend
        return backend

    def _fallback(self, conf: Mapping[str, Any]) -> Fallback:
        names = [self.target.model, *conf.get("models", ())]
        steps: list[tuple[str, Callable[..., Any]]] = [
            (n, lambda call, params, n=n: call(self.model(n), params)) for n in names
        ]
        static = conf.get("static")
        if static is not None:
            steps.append(("static", lambda call, params: static))
        return Fallback("fallback", steps, on=FAILURES, clock=self.clock, journal=self.journal)

    # ---------------------------------------------------------------------- rollbacks

    def close(self) -> None:
        """Close every stream, backend and client; stop the daemon; remove temporary
        files. Each rollback runs even when one before it fails; the first error is
        raised at the end."""
        rollbacks: list[Callable[[], object]] = [w.close for w in self.watched]
        if self.client is not None:
            rollbacks.append(self.client.close)
        if self.factory_backend is not None:
            rollbacks.append(self.factory_backend.close)
        rollbacks += [b.close for b in self.backends.values()]
        if self.daemon_backend is not None:
            rollbacks.append(self.daemon_backend.close)
        if self.proxy is not None:
            rollbacks.append(self.proxy.stop)
        if self.daemon is not None:
            rollbacks.append(self.daemon.close)
        if self.tmp is not None:
            rollbacks.append(self.tmp.cleanup)
        with contextlib.ExitStack() as stack:  # runs them all, last registered first
            for rollback in reversed(rollbacks):
                stack.callback(rollback)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _collected(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


class _Watched:
    """A stream source that remembers whether it was closed (``expect.source_closed``)."""

    def __init__(self, source: TextStream) -> None:
        self.source, self.closed = source, False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self.source)

    def close(self) -> None:
        self.closed = True
        self.source.close()


@dataclass(frozen=True, slots=True)
class _StreamRecord:
    delivered: str
    complete: bool
    kept: str  # the partial text the guard or the error kept ("" when complete)
