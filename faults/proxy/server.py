"""The public face of the proxy: :class:`FaultProxy`, the last layer, with what a caller uses
from its own thread (the counters and the active toxics, adding and removing toxics,
installing an interceptor, starting and stopping), each change handed to the loop and
acknowledged by it rather than waited for by sleeping. Its constructor and state are in
:mod:`faults.proxy.base`, its loop in :mod:`faults.proxy.loop`."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import TYPE_CHECKING, Self

from faults.proxy.loop import _Loop
from faults.proxy.state import _Active
from faults.proxy.toxics import _DIRECTIONS, Direction, Toxic

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from faults.proxy.exchange import Interceptor
    from faults.proxy.state import ProxyStats


_ACK_TIMEOUT = 10.0  # how long add()/remove() wait for the loop; it answers in microseconds


class FaultProxy(_Loop):
    """A TCP proxy from a loopback port to ``upstream`` that injects toxics.

    ``listen``: the loopback (host, port) to listen on (port 0: a free one). ``clock``
    stamps the ``FaultInjected`` events written to ``journal`` (site ``daemon.request`` for
    upstream toxics and ``Refuse``, ``daemon.stream`` for downstream ones; ``call`` is the
    connection's number, from 1), once per toxic and connection, when the toxic first acts.

    Use it as a context manager, or ``start()`` and ``stop()``. Raises ValueError for a
    listen host that is not a loopback address.
    """

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def url(self) -> str:
        """``http://host:port`` of the proxy, for an HTTP client."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats

    @property
    def toxics(self) -> tuple[tuple[Direction, Toxic], ...]:
        """The active toxics, in the order they apply."""
        with self._lock:
            return tuple((a.direction, a.toxic) for a in self._active)

    def __repr__(self) -> str:
        where = f"{self._address[0]}:{self._address[1]}" if self._address else "unstarted"
        return f"<FaultProxy {self.name!r} {where} -> {self.upstream[0]}:{self.upstream[1]}>"

    # --------------------------------------------------------------------------- toxics

    def add(self, toxic: Toxic, direction: Direction = "downstream") -> Toxic:
        """Add ``toxic`` to ``direction`` (ignored for ``Refuse``); returns it. Data read from
        now on meets it, and a ``Refuse`` is in force, when this returns. ValueError if the
        toxic is already added or the direction is unknown.
        """
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be 'upstream' or 'downstream', not {direction!r}")
        if not isinstance(toxic, Toxic):
            raise TypeError(f"not a toxic: {toxic!r}")
        with self._lock:
            if any(a.toxic is toxic for a in self._active):
                raise ValueError(f"{toxic} is already added to {self.name}")
            self._active = (*self._active, _Active(toxic, direction))
        self._sync()
        return toxic

    def remove(self, toxic: Toxic) -> None:
        """Remove ``toxic``; held data flows again when this returns. ValueError if absent."""
        with self._lock:
            kept = tuple(a for a in self._active if a.toxic is not toxic)
            if len(kept) == len(self._active):
                raise ValueError(f"{toxic} is not added to {self.name}")
            self._active = kept
        self._sync()

    def clear(self) -> None:
        """Remove every toxic."""
        with self._lock:
            self._active = ()
        self._sync()

    @property
    def interceptor(self) -> Interceptor | None:
        """The function asked about each HTTP request, or None."""
        with self._lock:
            return self._interceptor

    def intercept(self, interceptor: Interceptor | None) -> None:
        """Ask ``interceptor`` what to do with each HTTP request from now on (None: stop).

        The proxy reads HTTP/1.1 in both directions: requests are cut from the client's
        bytes (``content-length`` and chunked bodies), answers matched to them in order,
        so each request of a keep-alive connection is asked about, including on
        connections opened earlier. The interceptor gets an :class:`HttpRequest` and
        returns a :class:`Verdict` (None: forward it as it is); ``Verdict.answer`` is
        then asked about the answer's head and returns an :class:`AnswerPlan`. These
        callbacks run in the proxy's thread and must not block: blocking work goes in
        ``Verdict.before`` or a ``Cut.call``, run in worker threads. A connection whose
        bytes are not HTTP passes raw (the first line decides, up to 8 KiB).

        Removing the interceptor (None) ends at once everything it set going: delays and
        stalls end (a held request is forwarded, or closed if its verdict was ``close``),
        answers pass unchanged from then on, and this returns once the worker threads
        have finished. Raises ValueError when setting one while another is set (remove it
        first); on removal, RuntimeError for an exception raised by a callback or a worker
        meanwhile (each connection it concerned was reset), once all the above is done.
        """
        with self._lock:
            if interceptor is not None and self._interceptor is not None:
                raise ValueError(f"{self.name} already has an interceptor: remove it first")
            self._interceptor = interceptor
        self._sync()
        if interceptor is None:
            self._join_jobs()
            self._raise_failures("an interceptor callback or worker")

    @contextlib.contextmanager
    def toxic(self, toxic: Toxic, direction: Direction = "downstream") -> Iterator[Toxic]:
        """Add ``toxic`` for the ``with`` block, and remove it after."""
        self.add(toxic, direction)
        try:
            yield toxic
        finally:
            self.remove(toxic)

    def _sync(self) -> None:
        """Wake the loop and wait until it has applied the change (never a sleep: a handoff)."""
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            return
        with self._changed:
            self._requested += 1
            wanted = self._requested
        self._wake()
        with self._changed:
            ok = self._changed.wait_for(
                lambda: self._seen >= wanted or self._loop_done, _ACK_TIMEOUT
            )
        if not ok:
            raise RuntimeError(f"{self.name}'s loop did not answer within {_ACK_TIMEOUT:g}s")

    # ------------------------------------------------------------------- start and stop

    def start(self) -> Self:
        """Bind, listen and start forwarding. RuntimeError if already started; OSError if
        the port cannot be bound or the upstream's name does not resolve.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was already started")
        info = socket.getaddrinfo(*self.upstream, type=socket.SOCK_STREAM)[0]
        self._upstream_addr = (info[0], info[4])
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            self._listener = self._bind(self._listen)
            self._address = self._listener.getsockname()[:2]
            self._listening = False
            self._apply_refuse(self._refuse_wanted())  # listen, unless refusing already
        except BaseException:
            self._release()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"fault-proxy:{self._address[1]}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Reset every connection, close the listener, join the thread and the workers.
        Idempotent. Re-raises, as RuntimeError, a failure of the proxy's loop, or of an
        interceptor's callback or worker not yet reported, if there was one.
        """
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._stopping = True
            self._wake()
            thread.join()
        self._join_jobs()
        if thread is not None:
            self._release()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise RuntimeError(f"{self.name}'s loop failed: {failure!r}") from failure
        self._raise_failures("an interceptor callback or worker")

    def __enter__(self) -> Self:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
