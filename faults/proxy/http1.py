"""Reading and writing the HTTP/1.1 the proxy carries, with no sockets and no state of the
proxy: the patterns and size limits that decide whether bytes are HTTP we understand, header
fields (``Headers``) and their lookup, parsing and writing a head, chunk-size lines, the
data of a server-sent event and an event written back, and ``_SseCounter``, the incremental
reader of responses that counts events for ``ResetAfterEvents``."""

from __future__ import annotations

import re

_CHUNK = 65_536  # bytes read at a time; also the longest line _SseCounter keeps
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_METHOD_START = re.compile(rb"[A-Z]{1,20}(?: |\Z)")  # what a request line can begin with
_REQUEST_LINE = re.compile(rb"([A-Z]{1,20}) (\S+) (HTTP/1\.[01])")  # not HTTP/2's preface
_STATUS_LINE = re.compile(rb"(HTTP/1\.[01]) (\d{3})(?: .*)?")
_HEAD_LIMIT = 65_536  # a longer head is not HTTP we understand: the connection goes raw
_LINE_LIMIT = 8_192  # the same for a request line or a chunk-size line
_SSE_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_SSE_LINES = re.compile(rb"\r\n|\n|\r")
_DONE_EVENT = b"data: [DONE]\n\n"
_LAST_CHUNK = b"0\r\n\r\n"

#: Header fields, in order, as ``(name, value)`` text pairs (names as sent).
Headers = tuple[tuple[str, str], ...]


def _field(headers: Headers, name: str) -> str | None:
    """The value of header ``name`` (case-insensitive); repeated fields joined by ``, ``."""
    found = [v for k, v in headers if k.lower() == name]
    return ", ".join(found) if found else None


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",")}


def _parse_head(head: bytes, first: re.Pattern[bytes]) -> tuple[tuple[bytes, ...], Headers] | None:
    """The groups of the first line and the header fields, or None if it is not HTTP."""
    lines = head.split(b"\n")
    m = first.fullmatch(lines[0].rstrip(b"\r"))
    if m is None:
        return None
    fields: list[tuple[str, str]] = []
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            return None
        fields.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return m.groups(), tuple(fields)


def _head_bytes(first: bytes, headers: Headers) -> bytes:
    lines = [first, *(f"{k}: {v}".encode("latin-1") for k, v in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _sse_data(event: bytes) -> bytes | None:
    """The data of an event that carries some (None for comments, ``[DONE]``, ...)."""
    values = [
        line[5:].removeprefix(b" ") for line in _SSE_LINES.split(event) if line.startswith(b"data:")
    ]
    if not values:
        return None
    data = b"\n".join(values)
    return None if data.strip() == b"[DONE]" else data


def _sse_event(data: bytes) -> bytes:
    return b"".join(b"data: " + line + b"\n" for line in _SSE_LINES.split(data)) + b"\n"


def _chunk_size(line: bytes) -> int | None:
    """The size on a chunk-size line (extensions ignored), or None if it is not one."""
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
        return None
    return int(digits, 16)


class _SseCounter:
    """Counts server-sent events in HTTP/1.1 responses read incrementally.

    Modes: ``start`` (first byte decides: ``H`` an HTTP response, else a bare event stream),
    ``head`` (header lines), ``size``/``data``/``crlf``/``trailer`` (a chunked body),
    ``fixed`` (a Content-Length body), ``body`` (to the end; also a bare stream), ``off``
    (unparseable: count nothing).
    """

    __slots__ = (
        "at_line_start",
        "ended_on_cr",
        "events",
        "headers",
        "left",
        "line",
        "mode",
        "prev_cr",
        "sse",
    )

    def __init__(self) -> None:
        self.mode = "start"
        self.line = bytearray()
        self.headers: list[bytes] = []
        self.left = 0
        self.sse = False
        self.events = 0
        self.at_line_start = True
        self.prev_cr = False
        self.ended_on_cr = False  # the last event ended on a CR that may get its LF next

    def feed(self, data: bytes, want: int) -> int | None:
        """Read ``data``; the offset just past the event that makes ``want``, else None."""
        if self.ended_on_cr:  # the event is complete; take its LF too if it is here
            return 1 if data[:1] == b"\n" else 0
        i, n = 0, len(data)
        while i < n and self.mode != "off":
            if self.mode == "start":
                self.mode, self.sse = ("head", False) if data[i] == ord("H") else ("body", True)
            elif self.mode in ("data", "fixed", "body"):
                m = n - i if self.mode == "body" else min(self.left, n - i)
                end = self._scan(data, i, i + m, want) if self.sse else None
                if end is not None:
                    return end
                i += m
                self.left -= m
                if self.left == 0 and self.mode != "body":
                    self.mode = "crlf" if self.mode == "data" else "head"
            else:  # a line-oriented mode
                j = data.find(b"\n", i)
                stop = n if j < 0 else j + 1
                self.line += data[i:stop]
                i = stop
                if len(self.line) > _CHUNK:
                    self.mode = "off"
                elif j >= 0:
                    line, self.line = bytes(self.line).strip(), bytearray()
                    self._line(line)
        return None

    def _line(self, line: bytes) -> None:
        if self.mode == "head":
            if line:
                self.headers.append(line)
            elif self.headers:
                self._body()
        elif self.mode == "size":
            try:
                self.left = int(line.split(b";")[0], 16)
            except ValueError:
                self.mode = "off"
                return
            self.mode = "data" if self.left else "trailer"
        elif self.mode == "crlf":
            self.mode = "size"
        elif self.mode == "trailer" and not line:
            self.mode = "head"

    def _body(self) -> None:
        status, *fields = self.headers
        self.headers = []
        found = dict(f.lower().partition(b":")[::2] for f in fields)
        code = status.split(b" ")[1:2]
        self.sse = b"text/event-stream" in found.get(b"content-type", b"")
        if code and (code[0].startswith(b"1") or code[0] in (b"204", b"304")):
            self.mode = "head"
        elif b"chunked" in found.get(b"transfer-encoding", b""):
            self.mode = "size"
        elif b"content-length" in found:
            self.left = int(found[b"content-length"].strip() or 0)
            self.mode = "fixed" if self.left else "head"
        else:
            self.mode = "body"

    def _scan(self, data: bytes, start: int, end: int, want: int) -> int | None:
        """Count blank lines in ``data[start:end]``; where the ``want``-th event ends."""
        for k in range(start, end):
            b = data[k]
            if b == 10 and self.prev_cr:  # the LF of a CRLF: the line already ended
                self.prev_cr = False
                continue
            self.prev_cr = b == 13
            if b not in (10, 13):
                self.at_line_start = False
                continue
            if self.at_line_start:
                self.events += 1
                if self.events >= want:
                    if b == 13 and k + 1 == len(data):
                        self.ended_on_cr = True
                        return None
                    return k + 2 if b == 13 and data[k + 1] == 10 else k + 1
            self.at_line_start = True
        return None
