"""The streamed completions of :class:`~.client.DaemonBackend`: :class:`DaemonStream` (sync)
and :class:`AsyncDaemonStream` read the server's events as text chunks, check the call's
budget and cancel scopes between chunks, and close the HTTP response when the stream ends,
fails, is closed, or is dropped (an open one is tracked as a possible leak until then).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Self

from ...core.leaks import track
from .wire import _check_status, _Progress

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Iterator
    from types import TracebackType

    import httpx

    from .budget import _Budget
    from .client import DaemonBackend

__all__ = ["AsyncDaemonStream", "DaemonStream"]


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
