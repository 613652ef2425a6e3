"""The first layer of :class:`~faults.proxy.FaultProxy`, which the others extend:
``_ProxyBase`` holds the constructor and every piece of the proxy's state (the lock and the
change handshake, the loop's selector, listener and connection table, the interceptor, the
worker threads), with what all the layers share: the proxy's ``address``, waking the loop,
running and joining workers and collecting their failures, stamping journal events, binding
and releasing sockets, and ending a connection by reset (RST) or clean close (FIN)."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any

from faults.proxy.state import ProxyStats, _Active, _Conn, _Job
from pytest_resilience.core.clock import Clock, SystemClock
from pytest_resilience.core.events import FaultInjected

if TYPE_CHECKING:
    import selectors
    from collections.abc import Callable

    from faults.proxy.exchange import Interceptor
    from faults.proxy.toxics import Toxic
    from pytest_resilience.core.journal import Journal


_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class _ProxyBase:
    """The proxy's state, and what every layer above uses: waking the loop, workers and their
    failures, journal events, binding and releasing sockets, ending connections."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        clock: Clock | None = None,
        journal: Journal | None = None,
        name: str = "proxy",
    ) -> None:
        host = "127.0.0.1" if listen[0] == "localhost" else listen[0]
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the fault proxy listens on loopback only, not {listen[0]!r}")
        self.upstream = upstream
        self.clock: Clock = clock or SystemClock()
        self.journal = journal
        self.name = name
        self._listen = (host, listen[1])
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._active: tuple[_Active, ...] = ()
        self._stats = ProxyStats()
        self._requested = 0  # change generations asked for / seen by the loop
        self._seen = 0
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failure: Exception | None = None
        # owned by the loop thread while it runs
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._listener: socket.socket | None = None  # listening, or bound only (Refuse)
        self._listening = False
        self._loop_done = False
        self._conns: dict[socket.socket, _Conn] = {}  # by both of its sockets
        self._masks: dict[socket.socket, int] = {}
        self._upstream_addr: tuple[int, Any] | None = None
        self._round: tuple[_Active, ...] = ()  # the toxics of the loop's current round
        self._interceptor: Interceptor | None = None  # as asked for (under the lock)
        self._hook: Interceptor | None = None  # as the loop applies it
        self._jobs: list[threading.Thread] = []
        self._failures: list[BaseException] = []  # of jobs and interceptor callbacks

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) clients connect to. RuntimeError before ``start()``."""
        if self._address is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self._address

    # --------------------------------------------------------- the loop and its workers

    def _wake(self) -> None:
        wake = self._wake_w
        if wake is not None:
            with contextlib.suppress(OSError):  # full: a wake-up is already pending
                wake.send(b"\0")

    def _job(self, fn: Callable[[], object]) -> _Job:
        """Run ``fn`` in a worker thread that wakes the loop when it is done."""
        job = _Job()

        def run() -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - reported by intercept()/stop()
                job.error = exc
                with self._lock:
                    self._failures.append(exc)
            finally:
                job.done.set()
                self._wake()

        port = self._address[1] if self._address else 0
        job.thread = threading.Thread(target=run, name=f"fault-proxy-job:{port}", daemon=True)
        with self._lock:
            self._jobs = [t for t in self._jobs if t.is_alive()]
            self._jobs.append(job.thread)
        job.thread.start()
        return job

    def _join_jobs(self) -> None:
        while True:
            with self._lock:
                jobs, self._jobs = self._jobs, []
            if not jobs:
                return
            for thread in jobs:
                thread.join()

    def _raise_failures(self, what: str) -> None:
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            raise RuntimeError(f"{self.name}: {what} failed: {failures[0]!r}") from failures[0]

    def _failed(self, conn: _Conn, exc: BaseException) -> None:
        with self._lock:
            self._failures.append(exc)
        self._abort(conn, count=True)

    def _record(self, site: str, toxic: Toxic, call: int) -> None:
        if self.journal is not None:
            self.journal.append(
                FaultInjected(
                    time=self.clock.now(), source=self.name, site=site, fault=str(toxic), call=call
                )
            )

    # -------------------------------------------------------------------------- sockets

    def _bind(self, address: tuple[str, int]) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _release(self) -> None:
        """Close everything the loop owned (after it ended, or if start() failed)."""
        self._abort_all()
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._listener = self._wake_r = self._wake_w = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        self._masks.clear()

    def _unregister(self, sock: socket.socket) -> None:
        if self._masks.pop(sock, None) is not None and self._selector is not None:
            self._selector.unregister(sock)

    # -------------------------------------------------------------------------- closing

    def _alive(self, conn: _Conn) -> bool:
        return self._conns.get(conn.client) is conn

    def _open(self) -> list[_Conn]:
        return list(dict.fromkeys(self._conns.values()))  # each once, in accept order

    def _abort_all(self) -> None:
        for conn in self._open():
            self._abort(conn, count=False)

    def _forget(self, conn: _Conn) -> bool:
        if self._conns.get(conn.client) is not conn:
            return False
        for sock in (conn.client, conn.upstream):
            del self._conns[sock]
            self._unregister(sock)
        with self._lock:
            self._stats = dataclasses.replace(self._stats, open=self._stats.open - 1)
        return True

    def _abort(self, conn: _Conn, *, count: bool) -> None:
        """Reset both sides (RST): SO_LINGER 0, then close."""
        if not self._forget(conn):
            return
        if count:  # before the RST: a client that sees it then sees the count
            with self._lock:
                self._stats = dataclasses.replace(self._stats, resets=self._stats.resets + 1)
        for sock in (conn.client, conn.upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()

    def _close(self, conn: _Conn) -> None:
        """Close both sides cleanly (FIN)."""
        if self._forget(conn):
            conn.client.close()
            conn.upstream.close()
