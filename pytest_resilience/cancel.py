"""Deadline scopes and cooperative cancellation, for threads and for asyncio.

A :class:`CancelScope` carries a time budget and a cancel flag. Scopes nest through a
context variable: the inner deadline is the earlier of the two, and cancelling an outer
scope cancels every scope inside it. Work that can stop early polls ``check()`` (llama.cpp
between tokens, a stream between chunks) or blocks in ``scope.wait()`` (an injected hang),
which returns as soon as the scope is cancelled or its deadline passes::

    with deadline(30.0, clock=clock):
        for token in model.stream(prompt):   # the backend calls check() between tokens
            ...

In async code, ``async with deadline(...)`` also cancels the task when time runs out, and
turns that cancellation into :class:`DeadlineExceeded` (like ``asyncio.timeout``, but on
the scope's clock and visible to ``check()`` in code called from the task).
"""

from __future__ import annotations

import asyncio
import threading
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Self

from .clock import Clock, SystemClock
from .errors import Cancelled, DeadlineExceeded

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["CancelScope", "cancel_scope", "check_cancelled", "current_scope", "deadline"]

_current: ContextVar[CancelScope | None] = ContextVar("pytest_resilience_scope", default=None)


class CancelScope:
    """A time budget and a cancel flag, entered with ``with`` or ``async with``.

    ``timeout`` is relative to entry; ``deadline`` is absolute on the clock. Without a
    clock, a scope uses the clock of the scope around it, or the system clock.
    """

    def __init__(
        self,
        timeout: float | None = None,
        *,
        deadline: float | None = None,
        clock: Clock | None = None,
        name: str = "",
    ) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"a deadline scope needs a timeout >= 0, got {timeout}")
        self._timeout = timeout
        self._own_deadline = deadline
        self._clock = clock
        self.name = name or "deadline"
        self.deadline: float | None = deadline
        self.budget: float | None = timeout
        self._parent: CancelScope | None = None
        self._children: set[CancelScope] = set()
        self._reason: str | None = None
        self._event = threading.Event()
        self._token: Token[CancelScope | None] | None = None
        self._task: asyncio.Task[object] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired_async = False

    # ------------------------------------------------------------------ entering, leaving

    @property
    def clock(self) -> Clock:
        if self._clock is None:
            self._clock = self._parent.clock if self._parent is not None else SystemClock()
        return self._clock

    def _enter(self) -> None:
        if self._token is not None:
            raise RuntimeError("a CancelScope cannot be entered twice")
        parent = _current.get()
        self._parent = parent
        if self._timeout is not None:
            own = self.clock.now() + self._timeout
            self.deadline = own if self._own_deadline is None else min(own, self._own_deadline)
        if parent is not None:
            if parent.deadline is not None and (
                self.deadline is None or parent.deadline < self.deadline
            ):
                self.deadline = parent.deadline
                self.budget = parent.budget
            with _tree_lock:
                parent._children.add(self)
                if parent.cancel_reason is not None:
                    self._event.set()
        self._token = _current.set(self)

    def _exit(self) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if self._parent is not None:
            with _tree_lock:
                self._parent._children.discard(self)

    def __enter__(self) -> Self:
        self._enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit()

    async def __aenter__(self) -> Self:
        self._enter()
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        remaining = self.remaining()
        if remaining is not None and self._task is not None:
            self._timer = self._loop.call_later(remaining, self._expire)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._exit()
        ours = self._expired_async or self._reason is not None
        # uncancel() == 0: nobody but us asked for this cancellation, so it is ours to convert
        if (
            exc_type is asyncio.CancelledError
            and ours
            and self._task is not None
            and self._task.uncancel() == 0
        ):
            if self._reason is not None:
                raise Cancelled(self._reason) from exc
            raise self._exceeded() from exc

    def _expire(self) -> None:
        self._expired_async = True
        self._event.set()
        if self._task is not None:
            self._task.cancel()

    # -------------------------------------------------------------------- cancellation

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel this scope and every scope inside it. Safe from any thread."""
        with _tree_lock:
            if self._reason is None:
                self._reason = reason
            stack = [self]
            while stack:
                scope = stack.pop()
                scope._event.set()
                stack.extend(scope._children)
                if scope._task is not None and scope._loop is not None:
                    scope._loop.call_soon_threadsafe(scope._task.cancel)

    @property
    def cancel_reason(self) -> str | None:
        """Why this scope or one around it was cancelled, or None."""
        scope: CancelScope | None = self
        while scope is not None:
            if scope._reason is not None:
                return scope._reason
            scope = scope._parent
        return None

    @property
    def cancelled(self) -> bool:
        return self.cancel_reason is not None

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.clock.now())

    @property
    def expired(self) -> bool:
        return self.deadline is not None and self.clock.now() >= self.deadline

    def check(self) -> None:
        """Raise :class:`Cancelled` or :class:`DeadlineExceeded` if the work should stop."""
        reason = self.cancel_reason
        if reason is not None:
            raise Cancelled(reason)
        if self.deadline is not None and self.clock.now() >= self.deadline:
            raise self._exceeded()

    def wait(self, timeout: float | None = None, *, what: str = "") -> None:
        """Block until ``timeout`` passes, or raise as soon as the scope ends.

        With no timeout and no deadline this waits for ``cancel()``; under a virtual clock
        a wait that nothing can end raises :class:`~pytest_resilience.errors.HangDetected`.
        """
        self.check()
        remaining = self.remaining()
        limit = (
            remaining
            if timeout is None
            else (timeout if remaining is None else min(timeout, remaining))
        )
        self.clock.wait(self._event, limit, what=what or f"a wait in {self.name}")
        if (
            timeout is None
            or (remaining is not None and remaining <= timeout)
            or self._event.is_set()
        ):
            self.check()

    def _exceeded(self) -> DeadlineExceeded:
        budget = f" of {self.budget:.6g}s" if self.budget is not None else ""
        return DeadlineExceeded(f"{self.name}{budget} exceeded", budget=self.budget)

    def __repr__(self) -> str:
        state = f"cancelled={self._reason!r}" if self._reason else f"deadline={self.deadline}"
        return f"<CancelScope {self.name} {state}>"


_tree_lock = threading.Lock()


def deadline(seconds: float | None, *, clock: Clock | None = None, name: str = "") -> CancelScope:
    """A scope that ends ``seconds`` after it is entered (``None``: no deadline)."""
    return CancelScope(seconds, clock=clock, name=name)


def cancel_scope(*, clock: Clock | None = None, name: str = "scope") -> CancelScope:
    """A scope with no deadline, only a cancel flag."""
    return CancelScope(None, clock=clock, name=name)


def current_scope() -> CancelScope | None:
    """The innermost scope entered in this context, or None."""
    return _current.get()


def check_cancelled() -> None:
    """``check()`` on the current scope; nothing to do outside any scope."""
    scope = _current.get()
    if scope is not None:
        scope.check()
