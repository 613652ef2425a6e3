"""The model daemon: llama-cpp-python's OpenAI-compatible server as a child process, and a
client for any OpenAI-compatible server.

:class:`DaemonProcess` runs ``python -m llama_cpp.server`` on a free loopback port, waits
until it answers, and stops, kills, freezes (SIGSTOP), thaws and restarts it. It never
leaves a process or a zombie behind: every path reaps the child, and a ``weakref.finalize``
safety net kills and reaps it if the object is dropped or the interpreter exits.

:class:`DaemonBackend` speaks the ``Backend`` and ``AsyncBackend`` protocols over httpx:
``/v1/completions`` (whole, or streamed as server-sent events) and ``/v1/embeddings``. Each
call sends every sampling parameter explicitly (the server defaults ``repeat_penalty`` to
1.1, in-process generation to 1.0), and its time budget is the backend's ``total`` timeout
or the current cancel scope's remaining time, whichever is shorter. httpx is imported when a
client is first needed, never when this module is imported.

Failures are mapped with ``raise ... from exc``::

    httpx.ConnectError, ConnectTimeout, PoolTimeout  -> DaemonUnavailable
    httpx.RemoteProtocolError, ReadError, WriteError -> DaemonLost(partial=text so far)
    httpx.ReadTimeout, WriteTimeout                  -> DeadlineExceeded;
                                                        in a stream, StreamStalled(partial)
    the cancel scope or the total budget ran out     -> Cancelled / DeadlineExceeded
    HTTP 429                                         -> RateLimited(retry_after)
    HTTP 5xx                                         -> ServerError(status)
    any other status >= 300                          -> RequestRejected(status) (a BackendError)
    a malformed body, chunk or vector                -> InvalidOutput
    a stream that ends without ``data: [DONE]``      -> StreamInterrupted(partial)

The sync client enforces the budget when it sends (every httpx timeout is capped by it) and
between chunks, so a blocking read can overrun the budget by at most that capped read
timeout; in async code ``async with deadline(...)`` also cancels the task on time.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

from ..core.cancel import current_scope
from ..core.clock import Clock, SystemClock
from ..core.errors import (
    BackendError,
    Cancelled,
    DaemonLost,
    DaemonUnavailable,
    DeadlineExceeded,
    InvalidOutput,
    RateLimited,
    ResilienceError,
    ServerError,
    StreamInterrupted,
    StreamStalled,
)
from ..core.events import DaemonDown, DaemonRestarted, DaemonUp
from ..core.leaks import track
from .base import GenerationParams
from .llama import EmbeddingCheck

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Iterator
    from types import ModuleType, TracebackType

    import httpx

    from ..core.cancel import CancelScope
    from ..core.events import Journal

__all__ = [
    "AsyncDaemonStream",
    "DaemonBackend",
    "DaemonProcess",
    "DaemonStartFailed",
    "DaemonStream",
    "RequestRejected",
    "ServerOptions",
    "Timeouts",
]


class DaemonStartFailed(DaemonUnavailable):
    """The daemon exited, or was not ready in time, during ``start()``.

    ``exit_code`` is the process's exit status (negative: killed by that signal; for a
    daemon that was not ready in time, the status after we killed it); ``log_tail`` holds
    the last lines it wrote.
    """

    def __init__(self, message: str, *, exit_code: int | None, log_tail: str) -> None:
        self.exit_code = exit_code
        self.log_tail = log_tail
        tail = log_tail.strip() or "(the daemon wrote nothing)"
        super().__init__(f"{message}\n--- the daemon's last log lines ---\n{tail}")


class RequestRejected(BackendError):
    """The server refused the request (a 4xx other than 429, or an unexpected status)."""

    def __init__(self, status: int, message: str = "") -> None:
        self.status = status  # read by classify(): a 4xx is permanent
        super().__init__(f"HTTP {status}" + (f": {message}" if message else ""))


# ================================================================================ process


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How the server loads the model.

    ``kv_overrides`` are llama.cpp metadata overrides (``key=type:value``): a model whose GGUF
    names no pooling type (the tiny test model) needs ``("llama.pooling_type=int:1",)`` for
    mean-pooled, flat embeddings. ``extra`` adds raw ``--name value`` arguments.
    """

    n_ctx: int = 512
    n_threads: int = 1  # a small model gains nothing from threads on a shared machine
    seed: int = 0
    embedding: bool = False
    kv_overrides: tuple[str, ...] = ()
    verbose: bool = False
    extra: tuple[str, ...] = ()

    def argv(self, model: str, alias: str, host: str, port: int) -> list[str]:
        """The server's command-line arguments (after ``python``)."""
        args = [
            *("-m", "llama_cpp.server", "--model", model, "--model_alias", alias),
            *("--host", host, "--port", str(port), "--n_ctx", str(self.n_ctx)),
            *("--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)),
            *("--seed", str(self.seed), "--embedding", _flag(self.embedding)),
            *("--verbose", _flag(self.verbose)),
        ]
        if self.kv_overrides:
            args += ["--kv_overrides", *self.kv_overrides]
        return [*args, *self.extra]


def _flag(value: bool) -> str:
    return "true" if value else "false"


# The server reads its settings from the environment too (pydantic-settings, any case): a
# stray API_KEY, CONFIG_FILE or CACHE in the caller's environment would change the daemon.
_SERVER_SETTINGS = (
    "api_key cache cache_size cache_type chat_format chat_template_kwargs clip_model_path "
    "config_file disable_ping_events draft_model draft_model_num_pred_tokens embedding "
    "flash_attn hf_model_repo_id hf_pretrained_model_name_or_path hf_tokenizer_config_path "
    "host interrupt_requests kv_overrides last_n_tokens_size logits_all lora_base lora_path "
    "main_gpu model model_alias mul_mat_q n_batch n_ctx n_gpu_layers n_threads "
    "n_threads_batch n_ubatch numa offload_kqv port root_path rope_freq_base rope_freq_scale "
    "rope_scaling_type rpc_servers seed split_mode ssl_certfile ssl_keyfile tensor_split "
    "type_k type_v use_mlock use_mmap verbose vocab_only yarn_attn_factor yarn_beta_fast "
    "yarn_beta_slow yarn_ext_factor yarn_orig_ctx"
)
_SERVER_ENV = frozenset(_SERVER_SETTINGS.split())
_ADDRESS_IN_USE = re.compile(r"address already in use|errno 98\b", re.I)
_PORT_ATTEMPTS = 5
_LOG_TAIL_BYTES = 16_384


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in _SERVER_ENV}
    env["PYTHONUNBUFFERED"] = "1"  # the log shows what happened up to the very end
    return env


def _free_port(host: str) -> int:
    """A port that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _process_state(pid: int) -> str | None:
    """The state letter of ``/proc/PID/stat`` ("T": stopped), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] or None


class _PortTaken(Exception):
    """Somebody bound our port between our check and the server's bind: pick another."""


class _Handles:
    """The child and its log: what the safety net must release even if the DaemonProcess is
    dropped without ``close()``. Holds no reference to the DaemonProcess itself.
    """

    __slots__ = ("log", "proc")

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def kill(self) -> int | None:
        """SIGKILL (works on a stopped process too) and reap; the exit status."""
        proc = self.proc
        if proc is None:
            return None
        proc.kill()  # a no-op once the child has been reaped
        return proc.wait()

    def release(self) -> None:
        self.kill()
        if self.log is not None:
            self.log.close()
            self.log = None


class DaemonProcess:
    """``python -m llama_cpp.server`` as a child process on a loopback port.

    ``model_path``: the GGUF file. ``options``: how the server loads it. ``port``: the port
    to try first (None: a free one; a restart keeps the current one when it can). ``alias``:
    the model's name on the server (default: the file name). ``ready_timeout``: how long
    ``start()`` waits for the server to answer. ``stop_grace``: how long ``stop()`` waits
    after SIGTERM before SIGKILL. ``log_path``: where the server's output goes (appended;
    default: an anonymous temporary file, released by ``close()``). ``journal`` receives
    ``DaemonUp``, ``DaemonDown`` and ``DaemonRestarted``. The child runs in real time: the
    ``clock`` only paces the readiness polls.

    Use it as a context manager, or call ``close()``. ``kill()``, ``pause()`` and
    ``resume()`` may be called from any thread; ``start()``, ``stop()`` and ``restart()``
    from one thread at a time.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        options: ServerOptions | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        alias: str | None = None,
        ready_timeout: float = 30.0,
        stop_grace: float = 3.0,
        log_path: str | os.PathLike[str] | None = None,
        python: str | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
        name: str = "daemon",
    ) -> None:
        self.model_path = os.fspath(model_path)
        self.options = options or ServerOptions()
        self.host = host
        self.port: int | None = port
        self.alias = alias or Path(self.model_path).name
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.log_path = None if log_path is None else Path(log_path)
        self.python = python or sys.executable
        self.clock: Clock = clock or SystemClock()
        self.journal = journal
        self.name = name
        self.paused = False
        self.front: str | None = None  # the base URL clients are given, when not the server's
        self.startup_time: float | None = None  # seconds from spawn to ready, last start
        self._handles = _Handles()
        self._log_start = 0  # where the current child's output begins in the log
        self._finalizer = weakref.finalize(self, self._handles.release)

    # ------------------------------------------------------------------------- state

    @property
    def pid(self) -> int | None:
        """The running child's pid, or None."""
        return self._handles.proc.pid if self.alive and self._handles.proc else None

    @property
    def alive(self) -> bool:
        """Whether the child is running (or paused). Reaps it if it has exited."""
        proc = self._handles.proc
        return proc is not None and proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The last child's exit status once it has exited (negative: killed by signal)."""
        proc = self._handles.proc
        return None if proc is None else proc.poll()

    @property
    def base_url(self) -> str:
        """Where clients should send: ``front`` when something (a fault proxy) stands in
        front of the server, else :attr:`server_url`."""
        return self.front if self.front is not None else self.server_url

    @property
    def server_url(self) -> str:
        """``http://host:port`` of the server itself (still answers "refused" after a stop)."""
        if self.port is None:
            raise RuntimeError(f"{self.name} has not been started")
        return f"http://{self.host}:{self.port}"

    def log_tail(self, lines: int = 40, *, current: bool = False) -> str:
        """The last ``lines`` lines of the server's output (``current``: of this child only)."""
        log = self._handles.log
        if log is None:
            return ""
        fd = log.fileno()
        size = os.fstat(fd).st_size
        start = max(self._log_start if current else 0, size - _LOG_TAIL_BYTES)
        # pread leaves the offset alone: the child shares it and must keep appending
        data = os.pread(fd, size - start, start).decode("utf-8", "replace")
        return "\n".join(data.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("running" if self.alive else "stopped")
        return f"<DaemonProcess {self.name!r} pid={self.pid} port={self.port} {state}>"

    # ------------------------------------------------------------------ start, stop

    def start(self) -> Self:
        """Spawn the server and wait until ``/v1/models`` lists our model.

        Retries on another port if the chosen one was taken meanwhile. Raises
        DaemonStartFailed, with the exit code and the log's tail, if the server exits or is
        not ready within ``ready_timeout`` (it is then killed and reaped); RuntimeError if it
        is already running.
        """
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        started = self.clock.now()
        deadline = started + self.ready_timeout
        port = self.port
        for _ in range(_PORT_ATTEMPTS):
            port = port if port is not None else _free_port(self.host)
            ok = False
            try:
                self._spawn(port)
                self._wait_ready(port, deadline)
                ok = True
            except _PortTaken:
                port = None
                continue
            finally:
                if not ok:  # failed, interrupted or retrying: never leave the child behind
                    self._handles.kill()
            self.port = port
            self.startup_time = self.clock.now() - started
            self._record(
                DaemonUp(time=self.clock.now(), source=self.name, latency=self.startup_time)
            )
            return self
        raise DaemonStartFailed(
            f"{self.name}: no free port after {_PORT_ATTEMPTS} attempts",
            exit_code=self.returncode,
            log_tail=self.log_tail(current=True),
        )

    def _spawn(self, port: int) -> None:
        handles = self._handles
        if handles.log is None:
            handles.log = (
                tempfile.TemporaryFile("w+b", prefix="pytest-resilience-daemon-")  # noqa: SIM115 - closed by close()
                if self.log_path is None
                else self.log_path.open("a+b")
            )
        self._log_start = os.fstat(handles.log.fileno()).st_size
        argv = [self.python, *self.options.argv(self.model_path, self.alias, self.host, port)]
        self.paused = False
        handles.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=handles.log,
            stderr=subprocess.STDOUT,
            env=_child_env(),
        )

    def _wait_ready(self, port: int, deadline: float) -> None:
        proc = self._handles.proc
        assert proc is not None  # _spawn just set it
        delay = 0.01
        while True:
            code = proc.poll()
            if code is not None:
                tail = self.log_tail(current=True)
                if _ADDRESS_IN_USE.search(tail):
                    raise _PortTaken
                raise DaemonStartFailed(
                    f"{self.name} exited with code {code} before it was ready",
                    exit_code=code,
                    log_tail=tail,
                )
            remaining = deadline - self.clock.now()
            if self._answers(port, min(1.0, max(remaining, 0.05))):
                return
            remaining = deadline - self.clock.now()
            if remaining <= 0:
                code = self._handles.kill()
                raise DaemonStartFailed(
                    f"{self.name} was not ready within {self.ready_timeout:g}s "
                    f"(killed; exit code {code})",
                    exit_code=code,
                    log_tail=self.log_tail(current=True),
                )
            self.clock.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 0.1)

    def _answers(self, port: int, timeout: float) -> bool:
        """Whether ``/v1/models`` on ``port`` lists our alias (not some other server's)."""
        conn = http.client.HTTPConnection(self.host, port, timeout=timeout)
        try:
            conn.request("GET", "/v1/models")
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                return False
            models = json.loads(body).get("data", [])
            return any(isinstance(m, dict) and m.get("id") == self.alias for m in models)
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            return False  # not listening yet, or not our server: poll again
        finally:
            conn.close()

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (default ``stop_grace``); reap.

        A paused daemon is resumed so that it can shut down. Returns the exit status (None
        if it was never started). Idempotent.
        """
        proc = self._handles.proc
        if proc is None:
            return None
        if proc.poll() is not None:
            return proc.returncode
        proc.terminate()
        if self.paused:
            proc.send_signal(signal.SIGCONT)  # a stopped process would never handle SIGTERM
            self.paused = False
        code: int | None
        try:
            code = proc.wait(self.stop_grace if grace is None else grace)
        except subprocess.TimeoutExpired:
            code = self._handles.kill()
        self._record(DaemonDown(time=self.clock.now(), source=self.name, reason="stopped"))
        return code

    def kill(self) -> int | None:
        """SIGKILL the daemon (running or paused) and reap it; the exit status."""
        was_alive = self.alive
        code = self._handles.kill()
        self.paused = False
        if was_alive:
            self._record(DaemonDown(time=self.clock.now(), source=self.name, reason="killed"))
        return code

    def pause(self) -> None:
        """SIGSTOP: the daemon keeps its sockets but answers nothing until ``resume()``.

        Returns once the kernel shows the process stopped (on Linux; signals are delivered
        asynchronously). Raises DaemonUnavailable if it is not running.
        """
        self._signal(signal.SIGSTOP)
        self._await_state(stopped=True)
        self.paused = True
        self._record(DaemonDown(time=self.clock.now(), source=self.name, reason="paused"))

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        self._signal(signal.SIGCONT)
        self._await_state(stopped=False)
        self.paused = False
        self._record(DaemonUp(time=self.clock.now(), source=self.name))

    def restart(self) -> Self:
        """``stop()`` then ``start()``, on the same port when it is still free."""
        self.stop()
        self.start()
        self._record(DaemonRestarted(time=self.clock.now(), source=self.name, pid=self.pid or 0))
        return self

    def close(self) -> None:
        """Stop the daemon and release its log. Idempotent."""
        try:
            self.stop()
        finally:
            self._finalizer()

    def _signal(self, signum: int) -> None:
        proc = self._handles.proc
        if proc is None or proc.poll() is not None:
            raise DaemonUnavailable(f"{self.name} is not running")
        proc.send_signal(signum)

    def _await_state(self, *, stopped: bool, limit: float = 2.0) -> None:
        proc = self._handles.proc
        until = self.clock.now() + limit
        while proc is not None and self.clock.now() < until:
            state = _process_state(proc.pid)
            if state is None or (state in "tT") == stopped:
                return
            self.clock.sleep(0.001)

    def _record(self, event: DaemonUp | DaemonDown | DaemonRestarted) -> None:
        if self.journal is not None:
            self.journal.append(event)

    def __enter__(self) -> Self:
        if not self.alive:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ================================================================================ client


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed to connect, to wait for each read (the idle gap of a stream), to
    write, and in total per call (None: only the cancel scope bounds it).
    """

    connect: float = 5.0
    read: float = 60.0
    write: float = 10.0
    total: float | None = None


def _httpx() -> ModuleType:
    import httpx  # noqa: PLC0415 - optional dependency, imported on first use

    return httpx


class _Budget:
    """The time one call may take: the backend's total timeout and the cancel scope around
    the call (and, for a stream, the scope around each ``next()``).
    """

    __slots__ = ("clock", "deadline", "left", "scope", "timeouts")

    def __init__(self, timeouts: Timeouts, clock: Clock) -> None:
        self.timeouts = timeouts
        self.clock = clock
        self.scope = current_scope()
        self.deadline = None if timeouts.total is None else clock.now() + timeouts.total
        self.left: float | None = None  # the time left when the request was sent

    def _scopes(self) -> tuple[CancelScope, ...]:
        here = current_scope()
        found = (self.scope, None if here is self.scope else here)
        return tuple(s for s in found if s is not None)

    def _own_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self.clock.now())

    def remaining(self) -> float | None:
        left = [s.remaining() for s in self._scopes()]
        left.append(self._own_remaining())
        known = [x for x in left if x is not None]
        return min(known) if known else None

    def check(self) -> None:
        """Raise Cancelled / DeadlineExceeded if a scope ended or the total ran out."""
        for scope in self._scopes():
            scope.check()
        if self.deadline is not None and self.clock.now() >= self.deadline:
            raise self.exceeded()

    def limited(self, timeout: float) -> bool:
        """Whether the budget, not ``timeout``, bounded the request's wait."""
        return self.left is not None and self.left < timeout

    def exceeded(self) -> DeadlineExceeded:
        """The error of whichever limit ran out first: a scope's deadline or the total."""
        own = self._own_remaining()
        for scope in self._scopes():
            left = scope.remaining()
            if left is not None and (own is None or left <= own):
                spent = f" of {scope.budget:g}s" if scope.budget is not None else ""
                return DeadlineExceeded(f"{scope.name}{spent} exceeded", budget=scope.budget)
        total = self.timeouts.total
        return DeadlineExceeded(f"the call's time budget of {total:g}s ran out", budget=total)

    def httpx_timeout(self) -> httpx.Timeout:
        """The httpx timeouts for a request sent now: each capped by the time left."""
        self.check()
        self.left = left = self.remaining()
        t = self.timeouts

        def cap(value: float) -> float:
            return value if left is None else max(min(value, left), 1e-3)

        timeout: httpx.Timeout = _httpx().Timeout(
            connect=cap(t.connect), read=cap(t.read), write=cap(t.write), pool=cap(t.connect)
        )
        return timeout


class _Progress:
    """Text received so far; parses server-sent events into completion text.

    Shared by the sync and async streams (and used with no stream for whole answers).
    """

    __slots__ = ("_data", "chunks", "done", "finish_reason", "streaming", "text")

    def __init__(self, *, streaming: bool) -> None:
        self.streaming = streaming
        self.text = ""
        self.chunks = 0
        self.done = False
        self.finish_reason: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> str:
        """Take one SSE line; the text of the event it completes ("" if none)."""
        if line:
            if not line.startswith(":"):  # ":" starts a comment, e.g. a keep-alive ping
                field, _, value = line.partition(":")
                if field == "data":
                    self._data.append(value.removeprefix(" "))
            return ""
        return self._dispatch()

    def end(self) -> None:
        """The body ended: raise StreamInterrupted unless ``[DONE]`` arrived."""
        self._dispatch()
        if not self.done:
            raise StreamInterrupted("the daemon ended the stream without [DONE]", self.text)

    def _dispatch(self) -> str:
        if not self._data:
            return ""
        data, self._data = "\n".join(self._data), []
        if data == "[DONE]":
            self.done = True
            return ""
        text, reason = _choice_text(_loads(data), streaming=True)
        self.chunks += 1
        self.finish_reason = reason or self.finish_reason
        self.text += text
        return text


def _loads(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidOutput(f"the daemon sent invalid JSON: {data[:200]!r}") from exc


def _choice_text(answer: object, *, streaming: bool = False) -> tuple[str, str | None]:
    """(text, finish_reason) of a completion or of one stream chunk."""
    if isinstance(answer, dict) and "error" in answer:
        raise ServerError(500, _message_of(answer))  # an error event inside a stream
    try:
        choice = answer["choices"][0]  # type: ignore[index]
        text = choice["text"]
        reason = choice.get("finish_reason")
    except (TypeError, KeyError, IndexError, AttributeError) as exc:
        what = "stream chunk" if streaming else "completion"
        raise InvalidOutput(f"malformed {what} from the daemon: {answer!r:.200}") from exc
    if not isinstance(text, str):
        raise InvalidOutput(f"completion text is {type(text).__name__}, not str")
    return text, reason if isinstance(reason, str) else None


def _message_of(body: object) -> str:
    """The server's own words from an error body (OpenAI, FastAPI or plain text)."""
    if isinstance(body, dict):
        error = body.get("error", body.get("detail"))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return str(error)[:500]
    return str(body)[:500]


def _retry_after(headers: httpx.Headers) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date measured against the ``Date``
    header (the server's own clock), never against ours.
    """
    raw = headers.get("retry-after")
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(raw)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    sent = headers.get("date")
    try:
        until = email.utils.parsedate_to_datetime(raw)
        now = email.utils.parsedate_to_datetime(sent) if sent else None
    except (TypeError, ValueError):
        return None
    return None if now is None else max(0.0, (until - now).total_seconds())


def _check_status(response: httpx.Response) -> None:
    """Raise RateLimited / ServerError / RequestRejected for a non-2xx response (read)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    try:
        body: object = response.json()
    except ValueError:
        body = response.text
    message = _message_of(body)
    if status == 429:
        raise RateLimited(
            f"rate limited: {message}" if message else "rate limited",
            retry_after=_retry_after(response.headers),
        )
    if status >= 500:
        raise ServerError(status, message)
    raise RequestRejected(status, message)


class DaemonBackend:
    """A client for an OpenAI-compatible completion server (the daemon), sync and async.

    ``base_url``: e.g. ``DaemonProcess.base_url``. ``timeouts``: connect, read (the longest
    silence allowed, also between stream chunks), write and total. ``model``: sent as the
    request's ``model`` (None: the server's default). ``api_key``: sent as a bearer token.
    ``embedding_check`` validates vectors; without a fixed dimension the first vector's
    width is expected from then on. ``transport`` / ``async_transport``: httpx transports
    (a mock, or a fault proxy). ``clock`` measures the total timeout. Environment proxies
    are ignored: a proxy between a client and a local daemon only hides its failures.

    Every method raises the errors in this module's table. ``close()`` releases the sync
    connection pool. Async calls each use a client of their own: an httpx AsyncClient is
    bound to the event loop it first ran on, and a backend must work from any loop (every
    ``asyncio.run`` is a new one); a loopback connection costs a fraction of a millisecond.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeouts: Timeouts | None = None,
        model: str | None = None,
        api_key: str | None = None,
        embedding_check: EmbeddingCheck | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        name: str = "daemon",
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self.model = model
        self.embedding_check = embedding_check or EmbeddingCheck()
        self.clock: Clock = clock or SystemClock()
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None
        self._dim: int | None = None

    def __repr__(self) -> str:
        return f"<DaemonBackend {self.name!r} {self.base_url}>"

    # ----------------------------------------------------------------------- plumbing

    def _sync_client(self) -> httpx.Client:
        if self._client is None:
            client: httpx.Client = _httpx().Client(
                base_url=self.base_url,
                headers=self._headers,
                transport=self._transport,
                trust_env=False,
            )
            self._client = client
        return self._client

    @contextlib.asynccontextmanager
    async def _async_client(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client for one call, closed after it (an injected transport stays open)."""
        client: httpx.AsyncClient = _httpx().AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            transport=self._async_transport,
            trust_env=False,
        )
        try:
            yield client
        finally:
            if self._async_transport is None:
                await client.aclose()

    def _budget(self) -> _Budget:
        return _Budget(self.timeouts, self.clock)

    def completion_body(
        self, prompt: str, params: GenerationParams, *, stream: bool
    ) -> dict[str, Any]:
        """The ``/v1/completions`` request body: every sampling parameter explicit."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "repeat_penalty": params.repeat_penalty,
            "stream": stream,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if self.model is not None:
            body["model"] = self.model
        return body

    def _embedding_body(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"input": text}
        if self.model is not None:
            body["model"] = self.model
        return body

    @contextlib.contextmanager
    def _translated(self, budget: _Budget, progress: _Progress) -> Iterator[None]:
        """Turn httpx's transport errors into ours, ``from`` the original."""
        httpx = _httpx()
        try:
            yield
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise self._map_error(httpx, exc, budget, progress) from exc

    def _map_error(
        self, httpx: ModuleType, exc: Exception, budget: _Budget, progress: _Progress
    ) -> ResilienceError | Cancelled:  # Cancelled: a BaseException, never a daemon failure
        where = f"the daemon at {self.base_url}"
        if isinstance(exc, httpx.TimeoutException):
            try:
                budget.check()
            except (Cancelled, DeadlineExceeded) as ended:  # that explains the timeout
                return ended
            connecting = isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
            t = self.timeouts
            if budget.limited(t.connect if connecting else t.read):
                return budget.exceeded()
            if connecting:
                return DaemonUnavailable(f"cannot connect to {where}: timed out")
            read = self.timeouts.read
            if progress.streaming:
                which = "first_token" if progress.chunks == 0 else "idle"
                return StreamStalled(which, read, progress.text)
            return DeadlineExceeded(
                f"{where} sent nothing for {read:g}s (read timeout): busy or frozen", budget=read
            )
        if isinstance(exc, httpx.ConnectError):
            return DaemonUnavailable(f"cannot connect to {where}: {exc}")
        return DaemonLost(
            f"lost the connection to {where} after {len(progress.text)} characters: {exc}",
            partial=progress.text,
        )

    def _validated(self, answer: object) -> list[float]:
        try:
            vector = answer["data"][0]["embedding"]  # type: ignore[index]
        except (TypeError, KeyError, IndexError) as exc:
            raise InvalidOutput(f"malformed embedding answer: {answer!r:.200}") from exc
        values = self.embedding_check(vector, dim=self._dim)
        if self._dim is None:
            self._dim = len(values)
        return values

    # ------------------------------------------------------------------------- sync

    def _post(self, path: str, body: dict[str, Any], budget: _Budget) -> Any:
        progress = _Progress(streaming=False)
        with self._translated(budget, progress):
            response = self._sync_client().post(path, json=body, timeout=budget.httpx_timeout())
        _check_status(response)
        budget.check()  # a scope cancelled meanwhile wins, as in-process generation does
        return _loads(response.content)

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str:
        """The whole completion of ``prompt``."""
        body = self.completion_body(prompt, params or GenerationParams(), stream=False)
        return _choice_text(self._post("/v1/completions", body, self._budget()))[0]

    def stream(self, prompt: str, params: GenerationParams | None = None) -> DaemonStream:
        """The completion as chunks. The request is sent now, so an unreachable daemon or
        an error status raises here; closing the stream (or dropping it) closes the response.
        """
        body = self.completion_body(prompt, params or GenerationParams(), stream=True)
        budget = self._budget()
        progress = _Progress(streaming=True)
        client = self._sync_client()
        with self._translated(budget, progress):
            request = client.build_request(
                "POST", "/v1/completions", json=body, timeout=budget.httpx_timeout()
            )
            response = client.send(request, stream=True)
        ok = False
        try:
            if not 200 <= response.status_code < 300:
                with self._translated(budget, progress):
                    response.read()
                _check_status(response)
            stream = DaemonStream(self, response, budget, progress)
            ok = True
        finally:
            if not ok:
                response.close()
        return stream

    def embed(self, text: str) -> list[float]:
        """The validated embedding of ``text``; InvalidOutput for a malformed, wrong-width
        or non-finite vector.
        """
        return self._validated(
            self._post("/v1/embeddings", self._embedding_body(text), self._budget())
        )

    def models(self) -> list[str]:
        """The model ids the server lists (a cheap health probe)."""
        budget = self._budget()
        progress = _Progress(streaming=False)
        with self._translated(budget, progress):
            response = self._sync_client().get("/v1/models", timeout=budget.httpx_timeout())
        _check_status(response)
        data = _loads(response.content)
        try:
            return [str(m["id"]) for m in data["data"]]
        except (TypeError, KeyError) as exc:
            raise InvalidOutput(f"malformed model list: {data!r:.200}") from exc

    def close(self) -> None:
        """Close the sync connection pool. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------ async

    async def _apost(self, path: str, body: dict[str, Any], budget: _Budget) -> Any:
        progress = _Progress(streaming=False)
        async with self._async_client() as client:
            with self._translated(budget, progress):
                response = await client.post(path, json=body, timeout=budget.httpx_timeout())
        _check_status(response)
        budget.check()
        return _loads(response.content)

    async def agenerate(self, prompt: str, params: GenerationParams | None = None) -> str:
        """The whole completion of ``prompt`` (async)."""
        body = self.completion_body(prompt, params or GenerationParams(), stream=False)
        return _choice_text(await self._apost("/v1/completions", body, self._budget()))[0]

    def astream(self, prompt: str, params: GenerationParams | None = None) -> AsyncDaemonStream:
        """The completion as an async stream; the request is sent at the first ``anext``."""
        body = self.completion_body(prompt, params or GenerationParams(), stream=True)
        return AsyncDaemonStream(self, body, self._budget())

    async def aembed(self, text: str) -> list[float]:
        """The validated embedding of ``text`` (async)."""
        body = self._embedding_body(text)
        return self._validated(await self._apost("/v1/embeddings", body, self._budget()))

    async def aclose(self) -> None:
        """Close the sync connection pool (async calls hold none between calls)."""
        self.close()


def _so_far(text: str) -> str:
    return f"{len(text)} character{'' if len(text) == 1 else 's'} so far"


class DaemonStream:
    """The chunks of one streamed completion from the daemon.

    ``text`` holds what arrived so far and ``finish_reason`` the server's last one. The
    cancel scopes are checked between chunks. The response is closed when the stream ends,
    fails, is closed, or is garbage-collected.
    """

    def __init__(
        self, backend: DaemonBackend, response: httpx.Response, budget: _Budget, progress: _Progress
    ) -> None:
        self._backend = backend
        self._lines = response.iter_lines()
        self._budget = budget
        self._progress = progress
        self._close = weakref.finalize(self, response.close)
        track(self, "stream")  # open until closed, ended or failed (see leaks)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<DaemonStream from {self._backend.base_url} {state}, {_so_far(self.text)}>"

    @property
    def text(self) -> str:
        return self._progress.text

    @property
    def finish_reason(self) -> str | None:
        return self._progress.finish_reason

    @property
    def closed(self) -> bool:
        return not self._close.alive

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        ok = False
        try:
            text = self._next_text()
            ok = True
            return text
        finally:
            if not ok:  # ended, cancelled or failed: release the connection now
                self.close()

    def _next_text(self) -> str:
        progress = self._progress
        while not (progress.done or self.closed):
            self._budget.check()
            with self._backend._translated(self._budget, progress):
                line = next(self._lines, None)
            if line is None:
                progress.end()
                break
            text = progress.feed(line)
            if text:
                return text
        raise StopIteration

    def close(self) -> None:
        """Close the HTTP response (the server stops generating). Idempotent."""
        self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncDaemonStream:
    """The async counterpart of :class:`DaemonStream`. The request is sent at the first
    ``anext``; ``aclose()`` (or leaving ``async with``) closes the response. A stream that is
    dropped while open is closed by asyncio's async-generator finaliser.
    """

    def __init__(self, backend: DaemonBackend, body: dict[str, Any], budget: _Budget) -> None:
        self._backend = backend
        self._body = body
        self._budget = budget
        self._progress = _Progress(streaming=True)
        self._chunks = self._run()
        self._started = False
        # open once the request is sent, until the response is closed (see leaks)
        track(self, "stream", is_open=lambda s: s._started and not s.closed)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open" if self._started else "not started"
        return f"<AsyncDaemonStream from {self._backend.base_url} {state}, {_so_far(self.text)}>"

    @property
    def closed(self) -> bool:
        """Whether the response is closed (or the stream ended before sending anything)."""
        return getattr(self._chunks, "ag_frame", None) is None  # None once finished or closed

    @property
    def text(self) -> str:
        return self._progress.text

    @property
    def finish_reason(self) -> str | None:
        return self._progress.finish_reason

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        self._started = True
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Close the HTTP response. Idempotent."""
        await self._chunks.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self) -> AsyncGenerator[str, None]:
        backend, budget, progress = self._backend, self._budget, self._progress
        async with backend._async_client() as client:
            with backend._translated(budget, progress):
                request = client.build_request(
                    "POST", "/v1/completions", json=self._body, timeout=budget.httpx_timeout()
                )
                response = await client.send(request, stream=True)
            try:
                if not 200 <= response.status_code < 300:
                    with backend._translated(budget, progress):
                        await response.aread()
                    _check_status(response)
                lines = response.aiter_lines()
                while not progress.done:
                    budget.check()
                    with backend._translated(budget, progress):
                        line = await anext(lines, None)
                    if line is None:
                        progress.end()
                        break
                    text = progress.feed(line)
                    if text:
                        yield text
            finally:
                await response.aclose()
