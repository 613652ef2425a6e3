"""The upstream's side of HTTP, the fourth layer of the proxy: ``_AnswerSide`` reads the
answers, matches each to its request, asks for its :class:`~faults.proxy.AnswerPlan` and
carries it out on an event stream (the body re-cut into events, their data rewritten, the
cuts acted, the head and the chunks framed again), follows each body's framing to the next
answer, and goes blind (the rest passes raw) where it cannot follow; and what is kept back
for a whole head or line when a side sends its end."""

from __future__ import annotations

from typing import Literal

from faults.proxy.exchange import _NO_PLAN, AnswerPlan, HttpAnswer
from faults.proxy.http1 import (
    _DONE_EVENT,
    _HEAD_END,
    _HEAD_LIMIT,
    _LAST_CHUNK,
    _LINE_LIMIT,
    _SSE_END,
    _STATUS_LINE,
    _chunk_size,
    _head_bytes,
    _parse_head,
    _sse_data,
    _sse_event,
    _tokens,
)
from faults.proxy.http_requests import _RequestSide
from faults.proxy.state import _Answering, _Conn, _Flow, _Http


class _AnswerSide(_RequestSide):
    """The upstream's answers, matched to their requests, with their plans carried out."""

    def _pump_down(self, conn: _Conn, data: bytes, now: float) -> None:
        """Read the upstream's answers: pass them on, with their plans applied."""
        h = conn.http
        buf = h.down_rest + data if h.down_rest else data
        h.down_rest = b""
        out = bytearray()
        i, n = 0, len(buf)
        while i < n and self._alive(conn):
            mode = h.down_mode
            if mode == "off":
                out += buf[i:]
                i = n
            elif mode == "sink":
                i = n
            elif mode == "head":
                after = self._answer_head(conn, buf, i, out, now)
                if after is None:  # the head is not complete yet
                    h.down_rest, i = buf[i:], n
                else:
                    i = after
            elif mode in ("fixed", "data", "close"):
                m = n - i if mode == "close" else min(h.down_left, n - i)
                self._payload(conn, buf[i : i + m], out, now)
                i += m
                if mode != "close":
                    h.down_left -= m
                if h.down_mode == "sink" or mode == "close" or h.down_left:
                    continue
                if mode == "data":
                    h.down_mode = "crlf"
                else:
                    self._answer_done(conn, out)
            else:  # the lines of a chunked body
                j = buf.find(b"\n", i)
                if j < 0:
                    if n - i > _LINE_LIMIT:
                        self._blind(h)
                    else:
                        h.down_rest, i = buf[i:], n
                    continue
                self._chunk_line(conn, buf[i : j + 1], out)
                i = j + 1
        if out and self._alive(conn):
            self._emit(conn, conn.down, bytes(out), now)

    def _chunk_line(self, conn: _Conn, line: bytes, out: bytearray) -> None:
        """A chunk-size line, the CRLF after a chunk, or a trailer line of an answer."""
        h = conn.http
        if h.answer is None or not h.answer.recut:
            out += line  # the framing passes as it is, unless the body is re-cut
        text = line.strip()
        if h.down_mode == "size":
            size = _chunk_size(text)
            if size is None:
                self._blind(h)
            elif size:
                h.down_mode, h.down_left = "data", size
            else:
                h.down_mode = "trailer"
        elif h.down_mode == "crlf":
            h.down_mode = "size"
        elif not text:
            self._answer_done(conn, out)

    def _blind(self, h: _Http) -> None:
        """Answers we cannot follow: the rest of the connection passes raw."""
        h.down_mode = "off"
        h.blind = True
        h.answer = None
        h.waiting.clear()

    def _answer_head(
        self, conn: _Conn, buf: bytes, i: int, out: bytearray, now: float
    ) -> int | None:
        """Read an answer's head at ``buf[i:]``: the offset after it (None: need more)."""
        h = conn.http
        if not b"HTTP/".startswith(buf[i : i + 5]) or not h.waiting:
            self._blind(h)  # not HTTP, or an answer nobody asked for
            return i
        end = _HEAD_END.search(buf, i)
        if end is None:
            if len(buf) - i > _HEAD_LIMIT:
                self._blind(h)
                return i
            return None
        head = buf[i : end.end()]
        parsed = _parse_head(head, _STATUS_LINE)
        if parsed is None:
            self._blind(h)
            return i
        (version, code), fields = parsed[0][:2], parsed[1]
        status = int(code)
        if status < 200:  # 1xx: the request's final answer follows (101: another protocol)
            out += head
            if status == 101:
                self._blind(h)
            return end.end()
        pending = h.waiting.popleft()
        answer = HttpAnswer(pending.request, status, version.decode(), fields)
        coding, length = answer.header("transfer-encoding"), answer.header("content-length")
        body: Literal["size", "fixed", "close"] | None
        if pending.request.method == "HEAD" or status in (204, 304):
            body = None
        elif coding is not None:
            body = "size" if "chunked" in _tokens(coding) else "close"
        elif length is not None:
            body = "fixed" if length.isdigit() else "close"
            h.down_left = int(length) if length.isdigit() else 0
            if not h.down_left:
                body = None
        else:
            body = "close"
        plan = None
        if pending.answer is not None and self._hook is not None:
            try:
                plan = pending.answer(answer)
            except Exception as exc:  # noqa: BLE001 - reported by intercept()/stop()
                self._failed(conn, exc)
                return len(buf)
        plan = plan or _NO_PLAN
        recut = answer.sse and body is not None and bool(plan.cuts or plan.rewrite)
        chunked = body == "size"
        if recut:
            head, chunked = self._recut_head(answer, head, plan, fixed=body == "fixed")
        out += head
        h.answer = _Answering(plan, recut=recut, chunked=chunked)
        if body is None:
            self._answer_done(conn, out)
        else:
            h.down_mode = body
        return end.end()

    @staticmethod
    def _recut_head(
        answer: HttpAnswer, head: bytes, plan: AnswerPlan, *, fixed: bool
    ) -> tuple[bytes, bool]:
        """The head of an answer whose events are re-cut, and whether its body is chunked:
        a body whose length changes cannot keep its ``content-length``, and a ``done`` cut
        closes the connection, so the head says ``connection: close``."""
        changes = plan.rewrite is not None or any(c.then == "done" for c in plan.cuts)
        closes = any(c.then == "done" for c in plan.cuts)
        chunked = not fixed and "chunked" in _tokens(answer.header("transfer-encoding"))
        fields = list(answer.headers)
        if fixed and changes:
            fields = [(k, v) for k, v in fields if k.lower() != "content-length"]
            if answer.version == "HTTP/1.1":
                fields.append(("Transfer-Encoding", "chunked"))
                chunked = True
            else:
                closes = True  # HTTP/1.0: the body ends with the connection
        if not closes and fields == list(answer.headers):
            return head, chunked
        if closes:
            fields = [(k, v) for k, v in fields if k.lower() != "connection"]
            fields.append(("connection", "close"))
        first = head.split(b"\n", 1)[0].rstrip(b"\r")
        return _head_bytes(first, tuple(fields)), chunked

    def _payload(self, conn: _Conn, data: bytes, out: bytearray, now: float) -> None:
        """Body bytes of the current answer: passed on, or cut into events."""
        a = conn.http.answer
        if a is None or not a.recut:
            out += data
            return
        a.buffer += data
        while m := _SSE_END.search(a.buffer):
            event = bytes(a.buffer[: m.end()])
            del a.buffer[: m.end()]
            if not self._event(conn, a, event, out, now):
                return

    def _event(self, conn: _Conn, a: _Answering, event: bytes, out: bytearray, now: float) -> bool:
        """Pass one whole event on, with the plan applied; False once a cut ended the answer."""
        data = _sse_data(event)
        if data is None:
            out += a.frame(event)
            return True
        plan = a.plan
        for k, cut in enumerate(plan.cuts):
            if cut.after != a.events or k in a.acted:
                continue
            a.acted.add(k)
            if cut.call is not None:
                self._job(cut.call)
            if cut.then == "stall":
                self._emit(conn, conn.down, bytes(out), now)
                out.clear()
                self._gate(conn.down, now + cut.seconds)
                continue
            if cut.then == "done":
                last = _DONE_EVENT if cut.event is None else cut.event
                out += a.frame(last) + (_LAST_CHUNK if a.chunked else b"")
            self._emit(conn, conn.down, bytes(out), now)
            out.clear()
            if cut.then in ("done", "reset"):
                self._end_flow(conn.down, "close" if cut.then == "done" else "reset")
            conn.http.down_mode, conn.http.answer = "sink", None
            return False
        a.events += 1
        if plan.rewrite is not None:
            try:
                event = _sse_event(plan.rewrite(data))
            except Exception as exc:  # noqa: BLE001 - reported by intercept()/stop()
                self._failed(conn, exc)
                return False
        out += a.frame(event)
        return True

    def _answer_done(self, conn: _Conn, out: bytearray) -> None:
        """The current answer was read to its end."""
        h = conn.http
        a, h.answer, h.down_mode = h.answer, None, "head"
        if a is None:
            return
        if a.recut:
            out += a.frame(bytes(a.buffer))
            if a.chunked:
                out += _LAST_CHUNK
        if a.plan.at_end is not None:
            self._job(a.plan.at_end)

    def _ended(self, conn: _Conn, flow: _Flow, now: float) -> None:
        """``flow``'s source sent its end: what was kept for a whole head or line goes."""
        h = conn.http
        if flow is conn.up:
            if h.hold is None:
                self._pump_up(conn, now)  # a partial head goes raw: it cannot complete now
            return
        out = bytearray()
        if h.down_mode == "close":
            self._answer_done(conn, out)
        elif h.down_rest and (h.answer is None or not h.answer.recut):
            out += h.down_rest
        h.down_rest = b""
        if out:
            self._emit(conn, flow, bytes(out), now)
