"""The process that owns the daemon: :class:`DaemonProcess` runs ``python -m
llama_cpp.server`` on a free loopback port, waits until it answers, and stops, kills, freezes
(SIGSTOP), thaws and restarts it, keeping its log. It never leaves a process or a zombie
behind: every path reaps the child, and a ``weakref.finalize`` safety net kills and reaps it
if the object is dropped or the interpreter exits. A start that fails raises
:class:`DaemonStartFailed` with the exit code and the last lines of the log.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path
from typing import IO, TYPE_CHECKING, Self

from ...core.clock import Clock, SystemClock
from ...core.errors import DaemonUnavailable
from ...core.events import DaemonDown, DaemonRestarted, DaemonUp
from .launch import ServerOptions, _child_env, _free_port

if TYPE_CHECKING:
    from types import TracebackType

    from ...core.journal import Journal

__all__ = ["DaemonProcess", "DaemonStartFailed"]


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


_ADDRESS_IN_USE = re.compile(r"address already in use|errno 98\b", re.I)
_PORT_ATTEMPTS = 5
_LOG_TAIL_BYTES = 16_384


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
