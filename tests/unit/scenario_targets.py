"""Functions that scenario files name as their callable target (not a test module).

Each records the arguments of the calls that ran its body in ``SEEN``, so that a test can
tell what the scenario passed. ``answer`` protects itself (a retry on the clock and journal
it is given); the others show one behaviour each: async, generators, ``None``, an error of
the app's own, a bug.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pytest_resilience import Backoff, Retry, SystemClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from pytest_resilience.core.clock import Clock
    from pytest_resilience.core.journal import Journal

SEEN: list[tuple[object, ...]] = []
NOT_CALLABLE = "a constant"


class ModelDown(Exception):
    """The app's own error for a model that is not there."""


def complete(prompt: str) -> str:
    """Stands for the call to a model."""
    return f"Once upon a time, {prompt.lower()}."


def answer(prompt: str, *, clock: Clock | None = None, journal: Journal | None = None) -> str:
    """Answer ``prompt``; a lost connection is tried again, twice, after 1 and 2 seconds."""
    SEEN.append(("answer", prompt, clock, journal))
    retry = Retry(
        on=ConnectionError,
        attempts=3,
        backoff=Backoff(base=1.0, jitter="none"),
        clock=clock or SystemClock(),
        journal=journal,
        name="answer",
    )
    return retry.call(complete, prompt)


async def aanswer(prompt: str, times: int = 1, *, clock: Clock | None = None) -> str:
    """Answer ``prompt`` ``times`` over, after 30 seconds of thought (``asyncio.sleep``)."""
    SEEN.append(("aanswer", prompt, times, clock))
    await asyncio.sleep(30)
    return complete(prompt) * times


def words(text: str) -> Iterator[str]:
    SEEN.append(("words", text))
    yield from text.split()


async def awords(text: str) -> AsyncIterator[str]:
    SEEN.append(("awords", text))
    for word in text.split():
        await asyncio.sleep(1)
        yield word


def nothing(prompt: str) -> str | None:
    """No answer: the failure mode of a model that returns ``None``."""
    SEEN.append(("nothing", prompt))
    return None


def down(prompt: str) -> str:
    SEEN.append(("down", prompt))
    raise ModelDown(f"no model to answer {prompt!r}")


def buggy(prompt: str) -> str:
    SEEN.append(("buggy", prompt))
    raise KeyError(prompt)


def appends(items: list[str], extra: str = "x") -> int:
    """Changes its argument: the next call must not see the change."""
    items.append(extra)
    SEEN.append(("appends", list(items)))
    return len(items)


def status_of(url: str) -> int:
    """The status of a GET of ``url``; an error status raises ``httpx.HTTPStatusError``."""
    import httpx  # noqa: PLC0415 - only the daemon_url test calls it

    SEEN.append(("status_of", url))
    return httpx.get(url).raise_for_status().status_code
