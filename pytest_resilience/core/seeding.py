"""Where the core's randomness comes from, so that a run's seed decides all of it.

Every component that draws (a retry's jitter) takes an ``rng``. When it is not given, it
gets :func:`default_rng`: a generator derived from the current *seed scope* and the
component's name, or, outside any scope, a fresh unseeded one. The pytest plugin opens a
scope around each test from the run's ``--fault-seed`` and the test's node id, so two runs
with the same seed wait the same jittered times, whatever the order of the tests or the
xdist worker, exactly as the fault schedules are decided::

    with seeded(7, "test_ask"):
        Retry(on=ConnectionError, name="ask")   # jitter drawn from (7, "test_ask", "retry:ask")

The scope is a context variable: code run by the test (and asyncio tasks it starts) sees
it; a thread the test starts does not, and draws unseeded unless given an ``rng``.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["default_rng", "derive_rng", "seeded"]

_SCOPE: contextvars.ContextVar[tuple[int | str, str] | None] = contextvars.ContextVar(
    "pytest_resilience.seed_scope", default=None
)


def derive_rng(seed: int | str, scope: str, name: object) -> random.Random:
    """A generator seeded from (seed, scope, name), the same in every process and run
    (a SHA-256 of the three, never Python's salted ``hash()``)."""
    import hashlib  # noqa: PLC0415 - OpenSSL costs 2 ms to import; only seeding needs it

    key = f"{seed}\x1f{scope}\x1f{name}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def default_rng(name: str) -> random.Random:
    """The generator a component called ``name`` draws from when none is injected."""
    current = _SCOPE.get()
    return random.Random() if current is None else derive_rng(current[0], current[1], name)


@contextlib.contextmanager
def seeded(seed: int | str, scope: str) -> Iterator[None]:
    """Make :func:`default_rng` derive from ``(seed, scope)`` inside the block."""
    token = _SCOPE.set((seed, scope))
    try:
        yield
    finally:
        _SCOPE.reset(token)
