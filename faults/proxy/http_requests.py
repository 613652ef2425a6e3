"""The client's side of HTTP, the third layer of the proxy: ``_RequestSide`` cuts requests out
of the client's bytes (the head, then a ``content-length`` or chunked body; what is not HTTP
passes raw), asks the interceptor about each one, and takes a held request through its
:class:`~faults.proxy.Verdict`'s steps (earlier answers first, ``before`` in a worker with
the upstream parked for a reconnect, the delay) before it forwards, replies, resets or
closes; it also lets everything go when the interceptor is removed."""

from __future__ import annotations

import errno
import math
import socket

from faults.proxy.exchange import _NO_PLAN, HttpRequest, Verdict, _reply_bytes
from faults.proxy.http1 import (
    _HEAD_END,
    _HEAD_LIMIT,
    _LINE_LIMIT,
    _METHOD_START,
    _REQUEST_LINE,
    _chunk_size,
    _parse_head,
    _tokens,
)
from faults.proxy.pump import _Pump
from faults.proxy.state import _Conn, _Hold, _Http, _Pending


class _RequestSide(_Pump):
    """Requests cut from the client's bytes, asked about, held and acted on."""

    def _abandoned(self, conn: _Conn) -> bool:
        """Whether the client, which ended its side, waits on a stall or a held close."""
        hold = conn.http.hold
        return conn.down.gate is not None or (hold is not None and hold.verdict.then == "close")

    def _pump_up(self, conn: _Conn, now: float) -> None:
        """Cut the client's bytes into requests: forward, hold or drop each."""
        h, flow = conn.http, conn.up
        out = bytearray()
        try:
            while flow.inbox and h.hold is None and self._alive(conn):
                if h.up_mode == "off":
                    if h.route == "forward":
                        out += flow.inbox
                    flow.inbox.clear()
                elif h.up_mode == "head":
                    if not self._request_head(conn, out, now):
                        break
                else:
                    piece = self._request_body(h, flow.inbox)
                    if piece is None:
                        break
                    if h.route == "forward":
                        out += piece
        finally:
            if out and self._alive(conn):
                self._emit(conn, flow, bytes(out), now)

    def _request_head(self, conn: _Conn, out: bytearray, now: float) -> bool:
        """Read a request's head from the inbox; False if more bytes are needed."""
        h, flow = conn.http, conn.up
        buf = flow.inbox
        blank = len(buf) - len(buf.lstrip(b"\r\n"))  # empty lines between requests
        if blank:
            if h.route == "forward":
                out += buf[:blank]
            del buf[:blank]
            return True
        end = _HEAD_END.search(buf)
        line = buf.find(b"\n")
        first = bytes(buf[: line if line >= 0 else min(len(buf), _LINE_LIMIT + 1)])
        if not _METHOD_START.match(first[:21]) or (
            line >= 0 and not _REQUEST_LINE.fullmatch(first.rstrip(b"\r"))
        ):
            h.up_mode = "off"  # not a request line: not HTTP
            return True
        if end is None:
            if len(buf) > _HEAD_LIMIT or len(first) > _LINE_LIMIT or flow.eof:
                h.up_mode = "off"
                return True
            return False
        head = bytes(buf[: end.end()])
        parsed = _parse_head(head, _REQUEST_LINE)
        if parsed is None:
            h.up_mode = "off"
            return True
        del buf[: end.end()]
        (method, target, version), fields = parsed
        h.index += 1
        request = HttpRequest(
            conn.number, h.index, method.decode(), target.decode("latin-1"), version.decode(),
            fields,
        )  # fmt: skip
        framed = self._frame_request(h, request)
        verdict = self._ask(conn, request) if self._hook is not None and framed else None
        if not self._alive(conn):
            return True
        h.route = "forward"
        if verdict is None:
            out += head
            h.waiting.append(_Pending(request, None))
        else:
            self._emit(conn, flow, bytes(out), now)  # what came before goes first
            out.clear()
            h.hold = _Hold(request, verdict, head)
        return True

    def _frame_request(self, h: _Http, request: HttpRequest) -> bool:
        """Set up the reading of the request's body; False if it cannot be framed."""
        coding = request.header("transfer-encoding")
        length = request.header("content-length")
        h.up_next = "head"
        if request.method == "CONNECT" or request.header("upgrade") is not None:
            h.up_next = "off"  # another protocol may follow
        if coding is not None:
            if "chunked" not in _tokens(coding):
                h.up_mode = "off"
                return False
            h.up_mode = "size"
        elif length is not None:
            try:
                h.up_left = int(length)
            except ValueError:
                h.up_left = -1
            if h.up_left < 0:
                h.up_mode = "off"
                return False
            h.up_mode = "fixed" if h.up_left else h.up_next
        else:
            h.up_mode = h.up_next
        return True

    def _request_body(self, h: _Http, buf: bytearray) -> bytes | None:
        """The next piece of the request's body in ``buf`` (taken), None if incomplete."""
        if h.up_mode in ("fixed", "data"):
            n = min(h.up_left, len(buf))
            piece = bytes(buf[:n])
            del buf[:n]
            h.up_left -= n
            if not h.up_left:
                h.up_mode = h.up_next if h.up_mode == "fixed" else "crlf"
            return piece
        j = buf.find(b"\n")
        if j < 0:
            if len(buf) > _LINE_LIMIT:
                h.up_mode = "off"
                return b""
            return None
        line = bytes(buf[: j + 1])
        del buf[: j + 1]
        text = line.strip()
        if h.up_mode == "size":
            size = _chunk_size(text)
            if size is None:
                h.up_mode = "off"
            elif size:
                h.up_mode, h.up_left = "data", size
            else:
                h.up_mode = "trailer"
        elif h.up_mode == "crlf":
            h.up_mode = "size"
        elif not text:  # the blank line that ends the trailer
            h.up_mode = h.up_next
        return line

    def _ask(self, conn: _Conn, request: HttpRequest) -> Verdict | None:
        assert self._hook is not None
        try:
            return self._hook(request)
        except Exception as exc:  # noqa: BLE001 - isolation: reported by intercept()/stop()
            self._failed(conn, exc)
            return None

    # -------------------------------------------------------------------- held requests

    def _advance(self, conn: _Conn, now: float) -> float:
        """Take held requests through their steps and parse what follows; the next timer."""
        h = conn.http
        while self._alive(conn):
            hold = h.hold
            if hold is None:
                self._pump_up(conn, now)
                if h.hold is None:
                    break
                continue
            wait = self._step(conn, hold, now)
            if wait is not None:
                return wait
        return math.inf

    def _step(self, conn: _Conn, hold: _Hold, now: float) -> float | None:
        """One held request's steps; a time to wait for (inf: an event), None once acted."""
        h, v = conn.http, hold.verdict
        if hold.stage == 0:
            if h.busy and not hold.released:
                return math.inf  # an earlier answer is still being read
            hold.stage = 1
        if hold.stage == 1:
            if v.before is not None and hold.job is None and not hold.released:
                if v.reconnect and not self._park(conn):
                    return math.inf
                hold.job = self._job(v.before)
            if hold.job is not None and not hold.job.done.is_set():
                return math.inf  # the worker wakes the loop when it is done
            if hold.job is not None and hold.job.error is not None:
                self._abort(conn, count=True)
                return math.inf
            hold.stage = 2
            if conn.parked:
                self._unpark(conn)
        if hold.stage == 2:
            if not self._alive(conn) or conn.connecting:
                return math.inf
            hold.stage = 3
            hold.until = now + v.delay
        if hold.stage == 3 and not hold.released and now < hold.until:
            return hold.until
        h.hold = None
        self._act(conn, hold, now)
        return None

    def _act(self, conn: _Conn, hold: _Hold, now: float) -> None:
        h, v, request = conn.http, hold.verdict, hold.request
        if v.then == "reset":
            self._abort(conn, count=True)
        elif v.then == "close":
            self._close(conn)
        elif v.then == "reply":
            assert v.reply is not None
            close = self._wants_close(h, request)
            data = _reply_bytes(v.reply, close=close, head_only=request.method == "HEAD")
            h.route = "discard"
            self._emit(conn, conn.down, data, now)
            if close:
                self._end_flow(conn.down, "close")
        else:
            h.route = "forward"
            h.waiting.append(_Pending(request, v.answer))
            self._emit(conn, conn.up, hold.head, now)

    @staticmethod
    def _wants_close(h: _Http, request: HttpRequest) -> bool:
        """Whether the connection must close after a reply of ours to ``request``."""
        tokens = _tokens(request.header("connection"))
        if "close" in tokens or h.up_next == "off":
            return True
        if request.version == "HTTP/1.0" and "keep-alive" not in tokens:
            return True
        # a client that waits for "100 Continue" may or may not send its body now
        body = h.up_mode not in ("head", "off")
        return body and (request.header("expect") or "").lower() == "100-continue"

    def _park(self, conn: _Conn) -> bool:
        """Close the connection's upstream socket, for a new one later; False if reset."""
        if conn.up.eof or conn.down.shut or conn.connecting:
            self._abort(conn, count=True)
            return False
        assert self._upstream_addr is not None
        old = conn.upstream
        self._unregister(old)
        del self._conns[old]
        old.close()
        new = socket.socket(self._upstream_addr[0], socket.SOCK_STREAM)
        new.setblocking(False)
        new.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conns[new] = conn
        conn.upstream = conn.up.dst = conn.down.src = new
        conn.connecting = conn.parked = True
        up, down = conn.up, conn.down
        up.queue.clear()
        up.queued = 0
        up.blocked = up.shut = False
        down.eof = False
        down.close_at = None
        conn.http.down_mode, conn.http.down_rest, conn.http.answer = "head", b"", None
        conn.http.waiting.clear()
        return True

    def _unpark(self, conn: _Conn) -> None:
        assert self._upstream_addr is not None
        conn.parked = False
        code = conn.upstream.connect_ex(self._upstream_addr[1])
        if code not in (0, errno.EINPROGRESS):
            self._abort(conn, count=True)
        elif code == 0:
            conn.connecting = False

    def _let_go(self) -> None:
        """The interceptor was removed: end its holds and stalls, forget its plans."""
        for conn in self._open():
            h = conn.http
            if h.hold is not None:
                h.hold.released = True
            for pending in h.waiting:
                pending.answer = None
            if h.answer is not None:
                h.answer.plan = _NO_PLAN
            for flow in (conn.up, conn.down):
                if flow.gate is not None:
                    flow.gate = -math.inf
