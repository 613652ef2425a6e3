"""Callables for the injector's ``py:`` sites to patch (not a test module).

Every kind of target: a module function, an async function, a generator, an async
generator, and methods (plain, static, class, inherited) on a class. Each counts its real
calls in ``CALLS`` so tests can tell a patched call that ran the body from one that did not.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Generator

CALLS: Counter[str] = Counter()


def answer(question: str, *, polite: bool = False) -> str:
    """Answer a question."""
    CALLS["answer"] += 1
    return f"yes, {question}" + (" please" if polite else "")


def vector(n: int = 4) -> list[float]:
    CALLS["vector"] += 1
    return [float(i) for i in range(n)]


async def aanswer(question: str) -> str:
    """Answer a question, asynchronously."""
    CALLS["aanswer"] += 1
    return f"async yes, {question}"


def words(text: str) -> Generator[str, None, int]:
    """Yield the words of ``text``; returns how many."""
    CALLS["words"] += 1
    count = 0
    for word in text.split():
        count += 1
        yield word
    return count


async def awords(text: str) -> AsyncIterator[str]:
    CALLS["awords"] += 1
    for word in text.split():
        yield word


class Client:
    """A downstream client with every kind of method."""

    def __init__(self, name: str = "client") -> None:
        self.name = name

    def ask(self, prompt: str) -> str:
        CALLS["Client.ask"] += 1
        return f"{self.name}: {prompt}"

    @staticmethod
    def version() -> str:
        CALLS["Client.version"] += 1
        return "1.0"

    @classmethod
    def make(cls, name: str) -> Client:
        CALLS["Client.make"] += 1
        return cls(name)

    async def aask(self, prompt: str) -> str:
        CALLS["Client.aask"] += 1
        return f"{self.name} async: {prompt}"


class SubClient(Client):
    """Inherits ``ask``: patching ``SubClient.ask`` must not touch ``Client.ask``."""


def target_0() -> int:
    return 0


def target_1() -> int:
    return 1


def target_2() -> int:
    return 2


def target_3() -> int:
    return 3


def target_4() -> int:
    return 4


def target_5() -> int:
    return 5


def target_6() -> int:
    return 6


def target_7() -> int:
    return 7


def target_8() -> int:
    return 8


def target_9() -> int:
    return 9
