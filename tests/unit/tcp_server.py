"""A real TCP server on 127.0.0.1 for the tests of virtual time and real I/O (not a test
module): it reads one line and answers after a real delay, or never."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextmanager
def tcp_server(answer: bytes | None, *, delay: float = 0.0) -> Iterator[int]:
    """A server on 127.0.0.1 that reads one line and, ``delay`` real seconds later, answers
    ``answer`` (None: never). Yields its port; stopped, its thread joined, on the way out."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:  # closed before anyone connected
            return
        with conn:
            conn.settimeout(10)
            conn.recv(1024)
            if answer is not None and not stop.wait(delay):
                conn.sendall(answer)
            stop.wait(10)  # keep the connection open until the test is done with it

    thread = threading.Thread(target=serve, name="tcp-server")
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(15)
