"""The daemon's client: :class:`DaemonBackend` speaks the ``Backend`` and ``AsyncBackend``
protocols over httpx to any OpenAI-compatible server: ``/v1/completions`` (whole, or streamed
as server-sent events, see :mod:`.streams`) and ``/v1/embeddings``. Each call sends every
sampling parameter explicitly (the server defaults ``repeat_penalty`` to 1.1, in-process
generation to 1.0), runs within its time budget (:mod:`.budget`), and raises the core's
errors, mapped ``from`` httpx's as the class docstring tabulates. httpx is imported when a
client is first needed, never when this module is imported.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Self

from ...core.clock import Clock, SystemClock
from ...core.errors import (
    Cancelled,
    DaemonLost,
    DaemonUnavailable,
    DeadlineExceeded,
    InvalidOutput,
    ResilienceError,
    StreamStalled,
)
from ..base import GenerationParams
from ..llama import EmbeddingCheck
from .budget import Timeouts, _Budget
from .streams import AsyncDaemonStream, DaemonStream
from .wire import _check_status, _choice_text, _httpx, _loads, _Progress

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from types import ModuleType, TracebackType

    import httpx

__all__ = ["DaemonBackend"]


class DaemonBackend:
    """A client for an OpenAI-compatible completion server (the daemon), sync and async.

    ``base_url``: e.g. ``DaemonProcess.base_url``. ``timeouts``: connect, read (the longest
    silence allowed, also between stream chunks), write and total. ``model``: sent as the
    request's ``model`` (None: the server's default). ``api_key``: sent as a bearer token.
    ``embedding_check`` validates vectors; without a fixed dimension the first vector's
    width is expected from then on. ``transport`` / ``async_transport``: httpx transports
    (a mock, or a fault proxy). ``clock`` measures the total timeout. Environment proxies
    are ignored: a proxy between a client and a local daemon only hides its failures.

    Every method maps its failures with ``raise ... from exc``::

        httpx.ConnectError, ConnectTimeout, PoolTimeout  -> DaemonUnavailable
        httpx.RemoteProtocolError, ReadError, WriteError -> DaemonLost(partial=text so far)
        httpx.ReadTimeout, WriteTimeout                  -> DeadlineExceeded;
                                                            in a stream, StreamStalled(partial)
        the cancel scope or the total budget ran out     -> Cancelled / DeadlineExceeded
        HTTP 429                                         -> RateLimited(retry_after)
        HTTP 5xx                                         -> ServerError(status)
        any other status >= 300                          -> RequestRejected(status) (a BackendError)
        a malformed body, chunk or vector                -> InvalidOutput
        a stream that ends without ``data: [DONE]``      -> StreamInterrupted(partial)

    ``close()`` releases the sync connection pool. Async calls each use a client of their
    own: an httpx AsyncClient is bound to the event loop it first ran on, and a backend must
    work from any loop (every ``asyncio.run`` is a new one); a loopback connection costs a
    fraction of a millisecond.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeouts: Timeouts | None = None,
        model: str | None = None,
        api_key: str | None = None,
        embedding_check: EmbeddingCheck | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        name: str = "daemon",
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self.model = model
        self.embedding_check = embedding_check or EmbeddingCheck()
        self.clock: Clock = clock or SystemClock()
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None
        self._dim: int | None = None

    def __repr__(self) -> str:
        return f"<DaemonBackend {self.name!r} {self.base_url}>"

    # ----------------------------------------------------------------------- plumbing

    def _sync_client(self) -> httpx.Client:
        if self._client is None:
            client: httpx.Client = _httpx().Client(
                base_url=self.base_url,
                headers=self._headers,
                transport=self._transport,
                trust_env=False,
            )
            self._client = client
        return self._client

    @contextlib.asynccontextmanager
    async def _async_client(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client for one call, closed after it (an injected transport stays open)."""
        client: httpx.AsyncClient = _httpx().AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            transport=self._async_transport,
            trust_env=False,
        )
        try:
            yield client
        finally:
            if self._async_transport is None:
                await client.aclose()

    def _budget(self) -> _Budget:
        return _Budget(self.timeouts, self.clock)

    def completion_body(
        self, prompt: str, params: GenerationParams, *, stream: bool
    ) -> dict[str, Any]:
        """The ``/v1/completions`` request body: every sampling parameter explicit."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "repeat_penalty": params.repeat_penalty,
            "stream": stream,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if self.model is not None:
            body["model"] = self.model
        return body

    def _embedding_body(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"input": text}
        if self.model is not None:
            body["model"] = self.model
        return body

    @contextlib.contextmanager
    def _translated(self, budget: _Budget, progress: _Progress) -> Iterator[None]:
        """Turn httpx's transport errors into ours, ``from`` the original."""
        httpx = _httpx()
        try:
            yield
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise self._map_error(httpx, exc, budget, progress) from exc

    def _map_error(
        self, httpx: ModuleType, exc: Exception, budget: _Budget, progress: _Progress
    ) -> ResilienceError | Cancelled:  # Cancelled: a BaseException, never a daemon failure
        where = f"the daemon at {self.base_url}"
        if isinstance(exc, httpx.TimeoutException):
            try:
                budget.check()
            except (Cancelled, DeadlineExceeded) as ended:  # that explains the timeout
                return ended
            connecting = isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
            t = self.timeouts
            if budget.limited(t.connect if connecting else t.read):
                return budget.exceeded()
            if connecting:
                return DaemonUnavailable(f"cannot connect to {where}: timed out")
            read = self.timeouts.read
            if progress.streaming:
                which = "first_token" if progress.chunks == 0 else "idle"
                return StreamStalled(which, read, progress.text)
            return DeadlineExceeded(
                f"{where} sent nothing for {read:g}s (read timeout): busy or frozen", budget=read
            )
        if isinstance(exc, httpx.ConnectError):
            return DaemonUnavailable(f"cannot connect to {where}: {exc}")
        return DaemonLost(
            f"lost the connection to {where} after {len(progress.text)} characters: {exc}",
            partial=progress.text,
        )

    def _validated(self, answer: object) -> list[float]:
        try:
            vector = answer["data"][0]["embedding"]  # type: ignore[index]
        except (TypeError, KeyError, IndexError) as exc:
            raise InvalidOutput(f"malformed embedding answer: {answer!r:.200}") from exc
        values = self.embedding_check(vector, dim=self._dim)
        if self._dim is None:
            self._dim = len(values)
        return values

    # ------------------------------------------------------------------------- sync

    def _post(self, path: str, body: dict[str, Any], budget: _Budget) -> Any:
        progress = _Progress(streaming=False)
        with self._translated(budget, progress):
            response = self._sync_client().post(path, json=body, timeout=budget.httpx_timeout())
        _check_status(response)
        budget.check()  # a scope cancelled meanwhile wins, as in-process generation does
        return _loads(response.content)

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str:
        """The whole completion of ``prompt``."""
        body = self.completion_body(prompt, params or GenerationParams(), stream=False)
        return _choice_text(self._post("/v1/completions", body, self._budget()))[0]

    def stream(self, prompt: str, params: GenerationParams | None = None) -> DaemonStream:
        """The completion as chunks. The request is sent now, so an unreachable daemon or
        an error status raises here; closing the stream (or dropping it) closes the response.
        """
        body = self.completion_body(prompt, params or GenerationParams(), stream=True)
        budget = self._budget()
        progress = _Progress(streaming=True)
        client = self._sync_client()
        with self._translated(budget, progress):
            request = client.build_request(
                "POST", "/v1/completions", json=body, timeout=budget.httpx_timeout()
            )
            response = client.send(request, stream=True)
        ok = False
        try:
            if not 200 <= response.status_code < 300:
                with self._translated(budget, progress):
                    response.read()
                _check_status(response)
            stream = DaemonStream(self, response, budget, progress)
            ok = True
        finally:
            if not ok:
                response.close()
        return stream

    def embed(self, text: str) -> list[float]:
        """The validated embedding of ``text``; InvalidOutput for a malformed, wrong-width
        or non-finite vector.
        """
        return self._validated(
            self._post("/v1/embeddings", self._embedding_body(text), self._budget())
        )

    def models(self) -> list[str]:
        """The model ids the server lists (a cheap health probe)."""
        budget = self._budget()
        progress = _Progress(streaming=False)
        with self._translated(budget, progress):
            response = self._sync_client().get("/v1/models", timeout=budget.httpx_timeout())
        _check_status(response)
        data = _loads(response.content)
        try:
            return [str(m["id"]) for m in data["data"]]
        except (TypeError, KeyError) as exc:
            raise InvalidOutput(f"malformed model list: {data!r:.200}") from exc

    def close(self) -> None:
        """Close the sync connection pool. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------ async

    async def _apost(self, path: str, body: dict[str, Any], budget: _Budget) -> Any:
        progress = _Progress(streaming=False)
        async with self._async_client() as client:
            with self._translated(budget, progress):
                response = await client.post(path, json=body, timeout=budget.httpx_timeout())
        _check_status(response)
        budget.check()
        return _loads(response.content)

    async def agenerate(self, prompt: str, params: GenerationParams | None = None) -> str:
        """The whole completion of ``prompt`` (async)."""
        body = self.completion_body(prompt, params or GenerationParams(), stream=False)
        return _choice_text(await self._apost("/v1/completions", body, self._budget()))[0]

    def astream(self, prompt: str, params: GenerationParams | None = None) -> AsyncDaemonStream:
        """The completion as an async stream; the request is sent at the first ``anext``."""
        body = self.completion_body(prompt, params or GenerationParams(), stream=True)
        return AsyncDaemonStream(self, body, self._budget())

    async def aembed(self, text: str) -> list[float]:
        """The validated embedding of ``text`` (async)."""
        body = self._embedding_body(text)
        return self._validated(await self._apost("/v1/embeddings", body, self._budget()))

    async def aclose(self) -> None:
        """Close the sync connection pool (async calls hold none between calls)."""
        self.close()
