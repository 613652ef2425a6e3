"""The proxy's loop, the fifth layer: ``_Loop`` is the one thread that owns every socket. Each
round it takes the toxic and interceptor changes (under ``Refuse``, swapping the listener
for a socket that is bound but not listening), services every connection (held requests,
gates, due chunks, ends passed on, slow closes, finished connections) to find the next
timer, registers the sockets with the selector, and dispatches what it reports: accepting a
client and connecting it upstream, or reading either side."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import selectors
import socket
import time

from faults.proxy.http1 import _CHUNK
from faults.proxy.http_answers import _AnswerSide
from faults.proxy.state import _Active, _Conn, _Flow
from faults.proxy.toxics import Direction, Refuse, SlowClose, Stall


class _Loop(_AnswerSide):
    """The loop's thread: each round's changes, servicing, the selector, accept and read."""

    def _run(self) -> None:
        try:
            while not self._stopping:
                active = self._round = self._apply_changes()
                timeout = self._service(active)
                self._register_all()
                assert self._selector is not None
                for key, mask in self._selector.select(timeout):
                    self._dispatch(key.fileobj, mask)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - isolation boundary: stop() re-raises it
            self._failure = exc
        finally:
            self._abort_all()
            with self._changed:
                self._loop_done = True
                self._changed.notify_all()

    def _apply_changes(self) -> tuple[_Active, ...]:
        with self._changed:
            active, wanted, hook = self._active, self._requested, self._interceptor
        self._apply_refuse(any(isinstance(a.toxic, Refuse) for a in active))
        if hook is not self._hook:
            if self._hook is not None:
                self._let_go()
            self._hook = hook
        with self._changed:
            self._seen = wanted
            self._changed.notify_all()
        return active

    def _refuse_wanted(self) -> bool:
        with self._lock:
            return any(isinstance(a.toxic, Refuse) for a in self._active)

    def _apply_refuse(self, refuse: bool) -> None:
        """Swap the listener for a bound-only socket on the same port, or back."""
        if refuse != self._listening:
            return
        if refuse:
            old, self._listener = self._listener, None
            if old is not None:
                self._unregister(old)
                old.close()  # connections still in the backlog are reset by the kernel
            # A socket bound but not listening holds the port: the kernel answers SYNs with
            # RST, so connect() fails with ECONNREFUSED, and nobody else can take the port.
            self._listener = self._bind(self.address)
            self._listening = False
            self._record("daemon.request", Refuse(), self._stats.connections + 1)
        else:
            if self._listener is None:
                self._listener = self._bind(self.address)
            self._listener.listen(128)
            self._listening = True

    def _service(self, active: tuple[_Active, ...]) -> float | None:
        """Forward what is due, pass on ends, close finished connections; the next timer."""
        now = time.monotonic()
        stalled = {a.direction: a for a in active if isinstance(a.toxic, Stall)}
        slow: dict[Direction, _Active] = {}
        for a in active:
            if isinstance(a.toxic, SlowClose) and a.direction not in slow:
                slow[a.direction] = a  # the first added wins
        timer = math.inf
        for conn in self._open():
            wait = self._service_http(conn, now)
            if wait is None:
                continue
            timer = min(timer, wait)
            for flow in (conn.up, conn.down):
                if flow.direction in stalled and (flow.queue or flow.eof or flow.ending):
                    self._acted(conn, flow, stalled[flow.direction])
                    continue
                due = self._flush(conn, flow, now)
                if due is None:  # the connection was reset
                    break
                timer = min(timer, due)
                if flow.queue or flow.blocked or flow.shut or flow.gate is not None:
                    continue
                if flow is conn.up and (flow.inbox or conn.http.hold is not None):
                    continue  # a request is still to go: its end of stream waits
                if flow.ending == "reset":
                    self._abort(conn, count=True)
                    break
                if flow.eof or flow.ending == "close":
                    if flow.close_at is None:
                        late = slow.get(flow.direction)
                        flow.close_at = now
                        if late is not None and isinstance(late.toxic, SlowClose):
                            flow.close_at += late.toxic.delay
                            self._acted(conn, flow, late)
                    if now < flow.close_at:
                        timer = min(timer, flow.close_at)
                        continue
                    if flow.ending == "close":
                        self._close(conn)
                        break
                    flow.shut = True
                    with contextlib.suppress(OSError):
                        flow.dst.shutdown(socket.SHUT_WR)
            else:
                if conn.up.shut and conn.down.shut:
                    self._close(conn)
        return None if timer == math.inf else max(0.0, timer - time.monotonic())

    def _service_http(self, conn: _Conn, now: float) -> float | None:
        """Move held requests on, end stall gates that are due, close the connection of a
        client that gave up; the next timer (None: closed, or waiting for its upstream)."""
        timer = math.inf
        if conn.up.inbox or conn.http.hold is not None:
            timer = self._advance(conn, now)
            if not self._alive(conn):
                return None
        if conn.connecting:
            return None
        if conn.up.eof and self._abandoned(conn):
            self._close(conn)  # the client gave up on a held request or a stalled answer
            return None
        for flow in (conn.up, conn.down):
            if flow.gate is not None:
                if flow.gate > now:
                    timer = min(timer, flow.gate)
                else:
                    self._ungate(conn, flow, now)
        return timer

    # ------------------------------------------------------------------------- selector

    def _register_all(self) -> None:
        want: dict[socket.socket, int] = {}
        if self._listener is not None and self._listening:
            want[self._listener] = selectors.EVENT_READ
        for conn in self._open():
            if conn.parked:  # no upstream for now; a client that leaves is still seen
                if conn.up.wants_read():
                    want[conn.client] = selectors.EVENT_READ
                continue
            if conn.connecting:
                want[conn.upstream] = selectors.EVENT_WRITE
                continue
            for flow in (conn.up, conn.down):
                if flow.wants_read():
                    want[flow.src] = want.get(flow.src, 0) | selectors.EVENT_READ
                if flow.blocked:
                    want[flow.dst] = want.get(flow.dst, 0) | selectors.EVENT_WRITE
        assert self._selector is not None
        for sock in [s for s in self._masks if s not in want]:
            self._unregister(sock)
        for sock, mask in want.items():
            old = self._masks.get(sock)
            if old is None:
                self._selector.register(sock, mask)
            elif old != mask:
                self._selector.modify(sock, mask)
            self._masks[sock] = mask

    def _dispatch(self, sock: socket.socket, mask: int) -> None:
        if sock is self._wake_r:
            with contextlib.suppress(BlockingIOError):
                while sock.recv(4096):
                    pass
            return
        if sock is self._listener:
            self._accept()
            return
        conn = self._conns.get(sock)
        if conn is None:  # closed earlier in this round
            return
        if conn.parked:
            if sock is conn.client:
                self._read(conn, conn.up)
            return
        if conn.connecting:
            self._connected(conn)
            return
        if mask & selectors.EVENT_WRITE:
            for flow in (conn.up, conn.down):
                if flow.dst is sock:
                    flow.blocked = False
        if mask & selectors.EVENT_READ:
            self._read(conn, conn.up if sock is conn.client else conn.down)

    def _accept(self) -> None:
        assert self._listener is not None
        assert self._upstream_addr is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up while in the backlog
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # out of descriptors: leave the rest in the backlog
                raise
            family, address = self._upstream_addr
            upstream = socket.socket(family, socket.SOCK_STREAM)
            with self._lock:
                s = self._stats
                self._stats = dataclasses.replace(s, connections=s.connections + 1, open=s.open + 1)
                number = self._stats.connections
            conn = _Conn(number, client, upstream)
            self._conns[client] = self._conns[upstream] = conn
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = upstream.connect_ex(address)
            if code not in (0, errno.EINPROGRESS):
                self._abort(conn, count=True)  # the upstream is down: reset the client now
            elif code == 0:
                conn.connecting = False

    def _connected(self, conn: _Conn) -> None:
        if conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._abort(conn, count=True)  # refused or unreachable: reset the client
        else:
            conn.connecting = False

    def _read(self, conn: _Conn, flow: _Flow) -> None:
        try:
            data = flow.src.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by that side: pass the reset on
            self._abort(conn, count=False)
            return
        now = time.monotonic()
        if not data:
            flow.eof = True
            self._ended(conn, flow, now)
            return
        if flow is conn.up:
            flow.inbox += data
            if conn.http.hold is None:
                self._pump_up(conn, now)
        else:
            self._pump_down(conn, data, now)
