"""The body of a urllib3 answer with the daemon.* faults in it: the socket file under the
``http.client`` response, replaced by one that serves the body as whole SSE events (the
plan of :mod:`faults.sites.sse` applied) in its transfer framing.

:class:`Body` reads the real body off the socket file (the data of each chunk, or the bytes
up to its length); :class:`Reframed` is the file ``http.client`` and urllib3 then read,
so every read urllib3 offers goes through urllib3's own code and error handling. A body
cut short (:class:`Ended`, or closed early) leaves its connection closed, never reused.
:func:`unmask_read` and :func:`unmask_stream` let a deadline's own ``DeadlineExceeded``
through where urllib3 would take it for a socket timeout.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from pytest_resilience.core.errors import DeadlineExceeded

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["Body", "Ended", "Reframed", "unmask_read", "unmask_stream"]

_MAXLINE = 65536  # http.client's limit on a chunk-size line
_READ = 65536


class Ended(Exception):
    """The body ends where the socket did (our ``Errors.cut``): EOF, as urllib3 reads it."""


def unmask_read(read: Callable[..., Any], file: Reframed, timed_out: type[Exception]) -> Any:
    """``read`` raising a deadline's own ``DeadlineExceeded`` again where urllib3 took it
    for a socket timeout (it is a ``TimeoutError``) and made it a ``ReadTimeoutError``."""

    @functools.wraps(read)
    def unmasked(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            return read(*args, **kwargs)
        except timed_out as exc:
            if file.masked is not None and exc.__cause__ is file.masked:
                raise file.masked from None
            raise

    return unmasked


def unmask_stream(
    stream: Callable[..., Iterator[bytes]], file: Reframed, timed_out: type[Exception]
) -> Any:
    """:func:`unmask_read` for a read that yields the body (``stream``, ``read_chunked``)."""

    @functools.wraps(stream)
    def unmasked(*args: Any, **kwargs: Any) -> Iterator[bytes]:
        __tracebackhide__ = True
        try:
            yield from stream(*args, **kwargs)
        except timed_out as exc:
            if file.masked is not None and exc.__cause__ is file.masked:
                raise file.masked from None
            raise

    return unmasked


class Body:
    """The body as it comes off the socket file: the data of each chunk (of a chunked
    answer), else the bytes up to its length or the end. A socket that ends early ends it
    (the faults' drain reads it to there); ``complete`` once the whole body was read."""

    def __init__(self, fp: Any, *, chunked: bool, length: int | None) -> None:
        self.fp, self.chunked, self.length = fp, chunked, length
        self.complete = False

    def chunks(self) -> Iterator[bytes]:
        fp = self.fp
        if not self.chunked:
            left = self.length
            while left is None or left > 0:
                data = fp.read1(_READ if left is None else min(_READ, left))
                if not data:
                    break
                if left is not None:
                    left -= len(data)
                yield data
            self.complete = not left
            return
        while True:
            line = fp.readline(_MAXLINE + 1)
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:  # b"": the socket ended (or it is not chunked framing)
                return
            if size == 0:
                while fp.readline(_MAXLINE + 1) not in (b"", b"\r\n", b"\n"):
                    pass  # trailers
                self.complete = True
                return
            data = fp.read(size)
            if data:
                yield data
            if len(data) < size:
                return
            fp.read(2)  # the CRLF after the data


class Reframed:
    """The socket file under an ``http.client`` response, serving the body as ``pieces``
    (whole SSE events with the plan applied) in its transfer framing, to http.client and
    urllib3's own readers, which raise their own errors for what the pieces raise (a reset,
    a socket timeout) as they do for the socket's. ``abandon()`` when the file is closed
    before the whole body was read from the socket."""

    def __init__(
        self, body: Body, pieces: Iterator[bytes], *, chunked: bool, abandon: Callable[[], None]
    ) -> None:
        self.body, self.pieces, self.chunked, self.abandon = body, pieces, chunked, abandon
        self.buffer = bytearray()
        self.ended = False
        self.closed = False
        self.masked: DeadlineExceeded | None = None  # a deadline's, on its way through urllib3

    # ------------------------------------------------------------------ the pieces

    def _next(self) -> bytes:
        __tracebackhide__ = True
        try:
            return next(self.pieces)
        except DeadlineExceeded as exc:  # a deadline above a stall: see unmask_read
            self.masked = exc
            raise

    def _pull(self) -> bool:
        """Frame the next piece into the buffer; False once the body has ended."""
        __tracebackhide__ = True
        if self.ended:
            return False
        try:
            piece = self._next()
        except StopIteration:
            self.ended = True
            if self.chunked:
                self.buffer += b"0\r\n\r\n"
                return True
            return False
        except Ended:
            self.ended = True
            return False
        except BaseException:
            self.ended = True
            raise
        if piece:
            self.buffer += b"%x\r\n%b\r\n" % (len(piece), piece) if self.chunked else piece
        return True

    def _take(self, n: int) -> bytes:
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    # ------------------------------------------------------------------ the file

    def read(self, n: int | None = -1) -> bytes:
        __tracebackhide__ = True
        if n is None or n < 0:
            while self._pull():
                pass
            return self._take(len(self.buffer))
        while len(self.buffer) < n and self._pull():
            pass
        return self._take(n)

    def read1(self, n: int = -1) -> bytes:
        __tracebackhide__ = True
        while not self.buffer and self._pull():
            pass
        return self._take(len(self.buffer) if n is None or n < 0 else n)

    def readinto(self, b: Any) -> int:
        __tracebackhide__ = True
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self, limit: int = -1) -> bytes:
        __tracebackhide__ = True
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                n = end + 1
                break
            if 0 <= limit <= len(self.buffer) or not self._pull():
                n = len(self.buffer)
                break
        return self._take(n if limit is None or limit < 0 else min(n, limit))

    def peek(self, n: int = 0) -> bytes:
        __tracebackhide__ = True
        while not self.buffer and self._pull():
            pass
        return bytes(self.buffer)

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return int(self.body.fp.fileno())

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            close = getattr(self.pieces, "close", None)
            if close is not None:
                close()
        finally:
            self.body.fp.close()
            if not self.body.complete:
                self.abandon()
