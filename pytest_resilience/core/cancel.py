"""Deadline scopes and cooperative cancellation, for threads and for asyncio.

A :class:`CancelScope` carries a time budget and a cancel flag. Scopes nest through a
context variable: the inner deadline is the earlier of the two, and cancelling an outer
scope cancels every scope inside it. Work that can stop early polls ``check()`` (llama.cpp
between tokens, a stream between chunks) or blocks in ``scope.wait()`` (an injected hang),
which returns as soon as the scope is cancelled or its deadline passes::

    with deadline(30.0, clock=clock):
        for token in model.stream(prompt):   # the backend calls check() between tokens
            ...

In async code, ``async with deadline(...)`` also cancels the task when time runs out (or
when the scope is cancelled) and turns that cancellation into :class:`DeadlineExceeded`
(or :class:`Cancelled`), like ``asyncio.timeout``: on the loop's clock, and visible to
``check()`` in code called from the task. A cancellation of the task from outside is never
converted: ``CancelledError`` goes on up.
"""

from __future__ import annotations

import asyncio
import threading
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Self

from .clock import Clock, SystemClock, loop_clock
from .errors import Cancelled, DeadlineExceeded

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["CancelScope", "cancel_scope", "check_cancelled", "current_scope", "deadline"]

_current: ContextVar[CancelScope | None] = ContextVar("pytest_resilience_scope", default=None)


class CancelScope:
    """A time budget and a cancel flag, entered with ``with`` or ``async with``.

    ``timeout`` is relative to entry; ``deadline`` is absolute on the clock. Without a
    clock, a scope uses the clock of the scope around it, else (``async with``) the running
    loop's clock (virtual time on a :meth:`VirtualClock.new_event_loop` loop), else the
    system clock. A scope is entered once.
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
        self._clock = clock
        self.name = name or "deadline"
        self.deadline: float | None = deadline
        self.budget: float | None = timeout
        self._owner: CancelScope = self  # the scope whose deadline this one inherited
        self._parent: CancelScope | None = None
        self._children: set[CancelScope] = set()
        self._reason: str | None = None
        # Set when this scope or one around it is cancelled or (async) expires: wakes wait().
        self._event = threading.Event()
        self._entered = False
        self._token: Token[CancelScope | None] | None = None
        # async only: the task to cancel, its cancelling() count at entry, and whether we
        # asked for a cancellation (at most once), so that only ours is converted.
        self._task: asyncio.Task[object] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancelling = 0
        self._cancel_requested = False
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ entering, leaving

    @property
    def clock(self) -> Clock:
        if self._clock is None:
            self._clock = self._parent.clock if self._parent is not None else SystemClock()
        return self._clock

    def _enter(self) -> None:
        if self._entered:
            raise RuntimeError("a CancelScope cannot be entered twice")
        self._entered = True
        parent = _current.get()
        self._parent = parent
        if self._timeout is not None:
            own = self.clock.now() + self._timeout
            self.deadline = own if self.deadline is None else min(own, self.deadline)
        if parent is not None:
            # The earlier deadline wins: an inner scope never outlives the one around it.
            if parent.deadline is not None and (
                self.deadline is None or parent.deadline < self.deadline
            ):
                self.deadline = parent.deadline
                self.budget = parent.budget
                self._owner = parent._owner
            with _tree_lock:
                parent._children.add(self)
                if parent.cancel_reason is not None:
                    self._event.set()
        self._token = _current.set(self)

    def _exit(self) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        with _tree_lock:
            self._task = None  # a later cancel() must not reach the task's next work
            if self._parent is not None:
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
        loop = asyncio.get_running_loop()
        if self._clock is None and _current.get() is None:
            self._clock = loop_clock(loop)
        self._enter()
        task = asyncio.current_task()
        if task is None:
            return self
        with _tree_lock:
            self._task, self._loop = task, loop
        self._cancelling = task.cancelling()
        if self.cancelled:
            self._request_cancel()
        elif (remaining := self.remaining()) is not None:
            # call_later runs on the loop's time: the scope's clock if it is that loop's.
            self._timer = loop.call_later(remaining, self._expire)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        if self._timer is not None:
            self._timer.cancel()
        self._exit()
        if not self._cancel_requested or task is None:
            return
        # Convert only our own cancellation: if somebody else cancelled the task too, the
        # count stays above what it was at entry and CancelledError goes on up.
        if task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            reason = self.cancel_reason
            raise (Cancelled(reason) if reason is not None else self._exceeded()) from exc

    def _expire(self) -> None:
        self._event.set()
        self._request_cancel()

    def _request_cancel(self) -> None:
        """In the loop's thread: cancel the task once, if the scope is still active."""
        if self._task is not None and not self._cancel_requested:
            self._cancel_requested = True
            self._task.cancel()

    # -------------------------------------------------------------------- cancellation

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel this scope and every scope inside it. Safe from any thread.

        Waits in those scopes wake at once; tasks in async scopes are cancelled and raise
        :class:`Cancelled` when they leave the cancelled scope.
        """
        clocks: list[Clock] = []
        with _tree_lock:
            if self._reason is None:
                self._reason = reason
            stack = [self]
            while stack:
                scope = stack.pop()
                scope._event.set()
                stack.extend(scope._children)
                if scope._clock is not None:
                    clocks.append(scope._clock)
                loop = scope._loop
                if scope._task is not None and loop is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(scope._request_cancel)
        for clock in {id(c): c for c in clocks}.values():
            notify = getattr(clock, "notify", None)  # a virtual clock: wake its waiters now
            if notify is not None:
                notify()

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

        Raises :class:`Cancelled` or :class:`DeadlineExceeded` when the scope (or one around
        it) is cancelled or its deadline passes first; the deadline wins a tie. With no
        timeout and no deadline this waits for ``cancel()``; under a virtual clock a wait
        that nothing can end raises :class:`~pytest_resilience.core.errors.HangDetected`.
        """
        clock = self.clock
        end = None if timeout is None else clock.now() + timeout
        what = what or f"a wait in {self.name}"
        while True:
            self.check()
            now = clock.now()
            if end is not None and now >= end:
                return
            # Loop rather than trust one wait: a clock may wake a hair before a deadline.
            limits = [t - now for t in (self.deadline, end) if t is not None]
            clock.wait(self._event, min(limits) if limits else None, what=what)

    def _exceeded(self) -> DeadlineExceeded:
        owner = self._owner
        budget = f" of {owner.budget:.6g}s" if owner.budget is not None else ""
        return DeadlineExceeded(f"{owner.name}{budget} exceeded", budget=owner.budget)

    def __repr__(self) -> str:
        state = f"cancelled={self._reason!r}" if self._reason else f"deadline={self.deadline}"
        return f"<CancelScope {self.name} {state}>"


_tree_lock = threading.Lock()


def deadline(seconds: float | None, *, clock: Clock | None = None, name: str = "") -> CancelScope:
    """A scope that ends ``seconds`` after it is entered (``None``: no deadline)."""
    return CancelScope(seconds, clock=clock, name=name)


def cancel_scope(*, clock: Clock | None = None, name: str = "scope") -> CancelScope:
    """A scope with no deadline, only a cancel flag."""
    # The timeout defaults to None: leaving it out would be the same call.
    return CancelScope(None, clock=clock, name=name)  # pragma: no mutate


def current_scope() -> CancelScope | None:
    """The innermost scope entered in this context, or None."""
    return _current.get()


def check_cancelled() -> None:
    """``check()`` on the current scope; nothing to do outside any scope."""
    scope = _current.get()
    if scope is not None:
        scope.check()
