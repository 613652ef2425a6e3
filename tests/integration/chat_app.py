"""A chat assistant on a local model server, as a team writes one.

It asks the server's OpenAI-compatible API with the official ``openai`` client, at the
``base_url`` it is given, and leaves the retrying to a retry library: the client's own
retries are off (``max_retries=0``).

- :class:`Assistant` answers in the chat window, where nobody waits long: tenacity, four
  attempts, backoff from half a second.
- :class:`AsyncAssistant` answers for the overnight digest, which can wait out a server that
  restarts: stamina, ten attempts, backoff from 30 seconds up to 5 minutes.

Both retry what another attempt may cure (the server unreachable or too slow, a 5xx
answer) and nothing else: a 4xx says the request itself is wrong, and is raised at once.
Once the retries are spent, both answer with a canned text. The app's only tie to
pytest-resilience is the marking of those fallbacks, which does nothing outside a test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Self

import openai
import stamina
import tenacity

from pytest_resilience.core.app import fallback_point, fell_back

if TYPE_CHECKING:
    from types import TracebackType

    from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

__all__ = ["CANNED", "TRANSIENT", "Assistant", "AsyncAssistant"]

CANNED: Final = "The assistant is busy right now; please try again in a minute."

#: What another attempt may cure: no answer at all (refused, reset, timed out: timeouts
#: are ``APIConnectionError`` too) or a 5xx. Every 4xx is left out.
TRANSIENT: Final = (openai.APIConnectionError, openai.InternalServerError)

MAX_TOKENS: Final = 16


def _messages(prompt: str) -> list[ChatCompletionMessageParam]:
    return [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": prompt},
    ]


def _text(completion: ChatCompletion) -> str:
    return completion.choices[0].message.content or ""


@fallback_point("canned")
def canned(prompt: str) -> str:
    """The answer while the model server is down or failing."""
    return CANNED


class Assistant:
    """Answers in the chat window: a few quick retries, then the canned answer."""

    def __init__(self, base_url: str, *, model: str, timeout: float = 10.0) -> None:
        self.model = model
        self.client = openai.OpenAI(
            base_url=base_url, api_key="local", max_retries=0, timeout=timeout
        )

    @tenacity.retry(
        retry=tenacity.retry_if_exception_type(TRANSIENT),
        wait=tenacity.wait_exponential(multiplier=0.5, max=8.0),
        stop=tenacity.stop_after_attempt(4),
        reraise=True,
    )
    def ask(self, prompt: str) -> str:
        """The model's answer; raises the last error once four attempts have failed."""
        completion = self.client.chat.completions.create(
            model=self.model, messages=_messages(prompt), max_tokens=MAX_TOKENS, temperature=0
        )
        return _text(completion)

    def answer(self, prompt: str) -> str:
        """What the user sees: the model's answer, or :data:`CANNED` while the server is
        unreachable or failing. A 4xx is a bug of ours: raised, never hidden."""
        try:
            return self.ask(prompt)
        except TRANSIENT:
            return canned(prompt)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncAssistant:
    """Answers for the overnight digest: patient retries, then the canned answer."""

    def __init__(self, base_url: str, *, model: str, timeout: float = 30.0) -> None:
        self.model = model
        self.client = openai.AsyncOpenAI(
            base_url=base_url, api_key="local", max_retries=0, timeout=timeout
        )

    # the attempts bound the wait (about half an hour), not stamina's default 45 s timeout
    @stamina.retry(on=TRANSIENT, attempts=10, timeout=None, wait_initial=30.0, wait_max=300.0)
    async def ask(self, prompt: str) -> str:
        """The model's answer; raises the last error once ten attempts have failed."""
        completion = await self.client.chat.completions.create(
            model=self.model, messages=_messages(prompt), max_tokens=MAX_TOKENS, temperature=0
        )
        return _text(completion)

    async def answer(self, prompt: str) -> str:
        """The model's answer for the digest, or :data:`CANNED` once the retries are spent.
        A 4xx is a bug of ours: raised, never hidden."""
        try:
            return await self.ask(prompt)
        except TRANSIENT as error:
            fell_back("canned", after=error)
            return CANNED

    async def aclose(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
