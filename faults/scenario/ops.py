"""The ops of a scenario: :class:`_Runner` runs each step against a :class:`_World`, a model
op through the scenario's retry, breaker, degradation and fallback (or through the resilient
client), a call through the retry and breaker, a daemon op or ``advance`` on the world, and
journals every step and op. The ``job`` op's first run is a real child process, SIGKILLed
once it has saved its checkpoints, so the code that starts and watches that child is here
beside the op.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from faults.scenario.callables import _call_text
from faults.scenario.events import ScenarioOp, ScenarioStep
from faults.scenario.model import _PARTS, FAILURES, Step
from faults.scenario.schema import CALL_OP, COUNTED_OPS, MODEL_OPS
from faults.scenario.world import _model_path, _StreamRecord, _Watched
from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import (
    BackendError,
    InvalidOutput,
    StreamInterrupted,
    StreamStalled,
)
from pytest_resilience.core.events import FaultInjected

if TYPE_CHECKING:
    from collections.abc import Callable

    from faults.scenario.model import Target
    from faults.scenario.outcome import Stats
    from faults.scenario.world import _World
    from pytest_resilience.backends.base import Backend
    from pytest_resilience.core.events import Event
    from pytest_resilience.core.recovery import CheckpointStore

T = TypeVar("T")


class _Runner:
    """Runs steps against a :class:`_World`, journaling each op and counting outcomes."""

    def __init__(self, world: _World, stats: Stats) -> None:
        self.world, self.stats = world, stats
        self.clock, self.journal = world.clock, world.journal
        self.ops: dict[str, Callable[[Step], object]] = {
            "generate": self.generate,
            "stream": self.stream,
            "embed": self.embed,
            "chat": self.chat,
            "job": self.job,
            CALL_OP: self.call_target,
        }

    def record(self, event: type[Event], **fields: Any) -> None:
        self.journal.append(event(time=self.clock.now(), source="scenario", **fields))

    def step(self, index: int, step: Step, *, count: bool = True) -> bool:
        """Run ``step`` (all its repeats); False if a model op failed."""
        detail = _describe_step(step, self.world.target)
        self.record(ScenarioStep, index=index, op=step.op, detail=detail)
        if step.op not in COUNTED_OPS:
            self.act(step)
            return True
        all_ok = True
        for _ in range(step.repeat):
            try:
                answer = self.ops[step.op](step)
            except self.world.failures as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            else:
                ok, detail = answer is not None, "" if answer is not None else "answered None"
                if isinstance(answer, _StreamRecord) and not answer.complete:
                    detail = f"partial answer kept ({len(answer.kept)} chars)"
            outcome = ("partial" if "partial" in detail else "ok") if ok else "failed"
            self.record(ScenarioOp, op=step.op, outcome=outcome, detail=detail[:200])
            if count:
                self.stats.count(step.op, ok)
            all_ok = all_ok and ok
        return all_ok

    def act(self, step: Step) -> None:
        daemon = self.world.daemon
        if step.op == "advance":
            if isinstance(self.clock, VirtualClock):
                self.clock.advance(step.seconds)
            else:
                self.clock.sleep(step.seconds)
            return
        assert daemon is not None  # load() refuses daemon ops without a daemon target
        {
            "kill_daemon": daemon.kill,
            "pause_daemon": daemon.pause,
            "resume_daemon": daemon.resume,
            "restart_daemon": daemon.restart,
        }[step.op]()

    # ------------------------------------------------------------------ model ops

    def params(self, step: Step) -> GenerationParams:
        return GenerationParams(max_tokens=step.max_tokens or self.world.target.max_tokens)

    def call(self, step: Step, fn: Callable[[Backend, GenerationParams], T]) -> T | None:
        """``fn(backend, params)`` through the scenario's retry, breaker, degradation and
        fallback (outermost first), or through the resilient client."""
        world = self.world
        params = self.params(step)
        res = {**world.scenario.resilience, **step.resilience}
        retry = world.policies.retry(res.get("retry"))

        def once() -> T:
            if world.breaker is not None:
                return world.breaker.call(self.through, fn, params)
            return self.through(fn, params)

        return retry.call(once) if retry is not None else once()

    def through(self, fn: Callable[[Backend, GenerationParams], T], params: GenerationParams) -> T:
        world = self.world
        degrader = world.degrader
        if degrader is not None:
            model = degrader.model or world.target.model
            started = self.clock.now()
            try:
                answer = fn(world.model(model), degrader.adjust(params))
            except FAILURES as exc:
                degrader.record(False, self.clock.now() - started, error=exc)
                raise
            degrader.record(True, self.clock.now() - started)
            return answer
        if world.fallback is not None:
            result: T = world.fallback(fn, params)
            return result
        return fn(world.model(world.target.model), params)

    def call_target(self, step: Step) -> object:
        """The callable target, through the scenario's retry and breaker (outermost first)."""
        world = self.world
        res = {**world.scenario.resilience, **step.resilience}
        retry = world.policies.retry(res.get("retry"))

        def once() -> object:
            if world.breaker is not None:
                return world.breaker.call(world.invoke, step)
            return world.invoke(step)

        return retry.call(once) if retry is not None else once()

    def generate(self, step: Step) -> str | None:
        client = self.world.client
        if client is not None:
            return client.generate(step.prompt, self.params(step))
        return self.call(step, lambda b, p: b.generate(step.prompt, p))

    def embed(self, step: Step) -> list[float] | None:
        client = self.world.client
        if client is not None:
            return client.embed(step.prompt)
        return self.call(step, lambda b, p: list(b.embed(step.prompt)))

    def chat(self, step: Step) -> str | None:
        def ask(backend: Backend, params: GenerationParams) -> str:
            chat = getattr(backend, "chat", None)
            if chat is None:
                raise BackendError(f"{backend.name} has no chat")
            text: str = chat([{"role": "user", "content": step.prompt}], params)
            return text

        return self.call(step, ask)

    def stream(self, step: Step) -> _StreamRecord | None:
        world = self.world
        params = self.params(step)
        if world.client is not None:
            resilient = world.client.stream(step.prompt, params)
            if resilient is None:
                return None
            with resilient:
                text = "".join(resilient)
            return _StreamRecord(text, resilient.complete, "" if resilient.complete else text)
        conf = {**world.scenario.resilience, **step.resilience}.get("stream", {})
        model = world.degrader.model if world.degrader is not None else None
        source = _Watched(world.model(model or world.target.model).stream(step.prompt, params))
        world.watched.append(source)
        delivered: list[str] = []
        guarded = world.policies.guard(conf).wrap(source)
        try:
            with guarded:
                delivered.extend(guarded)
        except (StreamStalled, StreamInterrupted) as exc:
            text = "".join(delivered)
            world.streams.append(
                _StreamRecord(text, False, exc.partial if exc.partial == text else "")
            )
            raise
        text = "".join(delivered)
        result = guarded.result
        complete = result is not None and result.complete
        kept = result.text if result is not None and not complete and result.text == text else ""
        record = _StreamRecord(text, complete, kept)
        world.streams.append(record)
        return record

    def job(self, step: Step) -> str:
        from pytest_resilience.core.recovery import (  # noqa: PLC0415
            CheckpointStore,
            RecoveryContext,
            execute_with_recovery,
        )

        world = self.world
        conf = world.scenario.resilience["checkpoint"]
        if world.tmp is None:
            world.tmp = tempfile.TemporaryDirectory(prefix="scenario-checkpoints-")
        store = CheckpointStore(Path(world.tmp.name), clock=self.clock, journal=self.journal)
        parts = conf.get("parts", _PARTS)
        if "killed_after" in conf and not world.job_killed:
            world.job_killed = True
            self.kill_job(step, store, conf["killed_after"], parts)

        def work(rec: RecoveryContext) -> str:
            done: dict[str, Any] = rec.state or {"next": 0, "parts": []}
            for i in range(done["next"], parts):
                text = self.generate(
                    Step("generate", f"{step.prompt} (part {i + 1})", max_tokens=step.max_tokens)
                )
                if text is None:
                    raise InvalidOutput(f"part {i + 1}: the model answered None")
                done["parts"].append(text)
                done["next"] = i + 1
                rec.save(done, step=i + 1)
            return "".join(done["parts"])

        return execute_with_recovery(
            work,
            on=FAILURES,
            checkpoint_key=conf.get("key", "job"),
            store=store,
            clock=self.clock,
            journal=self.journal,
        )

    def kill_job(self, step: Step, store: CheckpointStore, after: int, parts: int) -> None:
        """Run the job's first attempt in a child process on the target's model file, and
        SIGKILL it as soon as it has saved ``after`` checkpoints into ``store``: a real kill,
        at whatever the child is doing next (generating the next part, or writing it)."""
        world = self.world
        key = world.scenario.resilience["checkpoint"].get("key", "job")
        model = _model_path(world.target.model, world.base)
        max_tokens = step.max_tokens or world.target.max_tokens
        argv = [str(model), str(store.directory), key, step.prompt, str(parts), str(max_tokens)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([_PACKAGE_ROOT, *sys.path])}
        with tempfile.TemporaryFile() as errors:
            child = subprocess.Popen(
                [sys.executable, "-c", _JOB_CHILD, *argv],
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
                bufsize=0,  # raw reads: select() must see every line the child wrote
            )
            assert child.stdout is not None
            try:
                saved = _count_lines(child.stdout.fileno(), after)
            finally:
                child.kill()  # SIGKILL: no handler, no cleanup, no last write
                child.wait()
                child.stdout.close()
            if saved < after:
                errors.seek(0)
                tail = errors.read().decode("utf-8", "replace").strip().splitlines()[-5:]
                raise BackendError(
                    f"the job's child process ended after {saved} of {after} checkpoints "
                    f"(exit status {child.returncode}): {' | '.join(tail) or 'no output'}"
                )
        self.journal.append(
            FaultInjected(
                time=self.clock.now(),
                source="scenario",
                site="job.process",
                fault=f"lost(after={after})",
                call=1,
            )
        )


# The first run of a "job" step, as a separate process: argv is model, checkpoint folder,
# key, prompt, parts, max_tokens. It writes one checkpoint a part, as the in-process job does
# (the same state), and prints a line after each, for the parent to count before it kills.
_JOB_CHILD: Final = """
import sys
from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.llama import LlamaBackend
from pytest_resilience.core.recovery import CheckpointStore

model, folder, key, prompt, parts, max_tokens = sys.argv[1:]
store = CheckpointStore(folder)
done = {"next": 0, "parts": []}
with LlamaBackend(model, n_ctx=1024, n_threads=1) as llm:
    for i in range(int(parts)):
        params = GenerationParams(max_tokens=int(max_tokens))
        done["parts"].append(llm.generate(f"{prompt} (part {i + 1})", params))
        done["next"] = i + 1
        store.save(key, done, step=i + 1)
        print(i + 1, flush=True)
"""
_JOB_CHILD_LIMIT: Final = 60.0  # real seconds the parent waits for each checkpoint


def _count_lines(fd: int, wanted: int) -> int:
    """Read ``fd`` until ``wanted`` lines have come, it ends, or a line takes longer than
    ``_JOB_CHILD_LIMIT`` real seconds (the child runs in real time: a wedged one must fail
    the step, not the run). Returns the lines seen."""
    seen = 0
    while seen < wanted:
        ready, _, _ = select.select([fd], [], [], _JOB_CHILD_LIMIT)
        data = os.read(fd, 4096) if ready else b""
        if not data:
            break
        seen += data.count(b"\n")
    return seen


_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[2])


def _describe_step(step: Step, target: Target) -> str:
    if step.op == "advance":
        return f"{step.seconds:g}s"
    times = f" x{step.repeat}" if step.repeat > 1 else ""
    if step.op == CALL_OP:
        return f"{target.label}({_call_text(step)}){times}"
    if step.op in MODEL_OPS:
        return f"{step.prompt!r}{times}"
    return ""
