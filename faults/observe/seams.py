"""Where each retry library is observed: the one place that knows their internals.

One :class:`Seam` per library. ``check()`` says why the library's internals are not those
this module relies on (``None`` when they are); ``install()`` hooks the library, process
wide; ``uninstall()`` puts back exactly what was there. :mod:`faults.observe` installs a
library's seam when the first watch opens and uninstalls it when the last one closes.
Every hook costs a function call and a list check when nothing observes, and records an
:class:`~pytest_resilience.core.events.AppRetry` through
:func:`pytest_resilience.core.app.record_retry` when something does.

========  ======================================================  =====================
library   seam                                                    public?
========  ======================================================  =====================
stamina   ``stamina.instrumentation`` on-retry hooks: one hook    yes: its
          added to (and removed from) ``get_on_retry_hooks()``    instrumentation API
tenacity  ``BaseRetrying.iter`` and ``AsyncRetrying.iter``        ``iter`` and
          wrapped: an ``iter`` that returns a ``DoSleep`` is a    ``DoSleep`` are public
          retry (``RetryCallState``: attempt, outcome, sleep).    names; wrapping is a
          ``before_sleep`` is per object (no global seam).        patch
          Skipped for stamina's own Retrying (stamina's hook
          reports those, with stamina's name)
backoff   ``backoff._sync._call_handlers`` and                    no: private names, the
          ``backoff._async._call_handlers`` wrapped: a call       only global seam;
          with ``wait=`` runs the ``on_backoff`` handlers.        handlers are bound
          (``on_backoff`` is bound at decoration time.)           when decorating
openai    a filter on the ``openai._base_client`` logger: the     yes: a logger, its
          client logs "Retrying request in %f seconds (retry %i   message and arguments
          of %s)" inside the ``except`` that caught the failure
          (its own level lowered while watched; the records
          its level would have dropped are kept from handlers)
========  ======================================================  =====================

The ollama client has no retries of its own (tests/unit/test_observe.py checks that).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import logging
import sys
from typing import TYPE_CHECKING, Any, Final, Protocol

from pytest_resilience.core.app import current, record_retry

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["SEAMS", "Seam", "callable_name"]


class Seam(Protocol):
    @property
    def library(self) -> str:
        """The library's name (and that of its top-level module)."""
        ...

    def check(self) -> str | None:
        """Why the library cannot be observed (not installed, internals moved), or None."""
        ...

    def install(self) -> None: ...

    def uninstall(self) -> None:
        """Restore what ``install`` changed. Raises ``RuntimeError`` if something else
        replaced a hook since (then what can be restored is, and the rest stays)."""
        ...


def callable_name(fn: object) -> str:
    """``"module.qualname"`` of a function, as tenacity and stamina name it."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not isinstance(name, str):
        return repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if isinstance(module, str) and module != "builtins" else name


def _module(name: str) -> ModuleType | None:
    """The module, imported if it is installed; None if it is not."""
    found = sys.modules.get(name)
    if found is not None:
        return found
    top = name.partition(".")[0]
    if top not in sys.modules and importlib.util.find_spec(top) is None:
        return None
    return importlib.import_module(name)


class _Patch:
    """One attribute replaced by a wrapper, and put back."""

    __slots__ = ("name", "original", "owner", "wrapper")

    def __init__(self, owner: Any, name: str, wrapper: Any) -> None:
        self.owner, self.name, self.wrapper = owner, name, wrapper
        self.original = owner.__dict__[name]

    def apply(self) -> None:
        setattr(self.owner, self.name, self.wrapper)

    def restore(self) -> str | None:
        """Put the original back; if something else replaced the wrapper, leave it and
        say so."""
        now = self.owner.__dict__.get(self.name)
        if now is not self.wrapper:
            return f"{_where(self.owner)}.{self.name} was replaced while watched (by {now!r})"
        setattr(self.owner, self.name, self.original)
        return None


def _where(owner: Any) -> str:
    return f"{getattr(owner, '__module__', '?')}.{getattr(owner, '__qualname__', owner)}"


def _restore(patches: list[_Patch]) -> None:
    problems = [p for p in (patch.restore() for patch in reversed(patches)) if p]
    patches.clear()
    if problems:
        raise RuntimeError("; ".join(problems))


# ------------------------------------------------------------------------------ stamina


class StaminaSeam:
    """stamina's instrumentation: one on-retry hook among the application's own."""

    library: Final[str] = "stamina"

    def __init__(self) -> None:
        self._before: tuple[Any, ...] | None = None
        self._installed: tuple[Any, ...] | None = None

    def _instrumentation(self) -> ModuleType | None:
        return _module("stamina.instrumentation")

    def check(self) -> str | None:
        module = self._instrumentation()
        if module is None:
            return "stamina is not installed"
        missing = [
            name
            for name in ("get_on_retry_hooks", "set_on_retry_hooks", "RetryDetails")
            if not hasattr(module, name)
        ]
        if missing:
            return f"stamina.instrumentation has no {', '.join(missing)}"
        fields = getattr(module.RetryDetails, "__dataclass_fields__", {})
        wanted = {"name", "retry_num", "wait_for", "caused_by"}
        if not wanted <= set(fields):
            return f"stamina's RetryDetails lacks {sorted(wanted - set(fields))}"
        return None

    def install(self) -> None:
        module = self._instrumentation()
        assert module is not None
        self._before = tuple(module.get_on_retry_hooks())
        self._installed = (*self._before, _stamina_hook)
        module.set_on_retry_hooks(self._installed)

    def uninstall(self) -> None:
        module = self._instrumentation()
        before, installed = self._before, self._installed
        self._before = self._installed = None
        if module is None or before is None or installed is None:
            return
        now = tuple(module.get_on_retry_hooks())
        if now == installed:
            module.set_on_retry_hooks(before)
        elif _stamina_hook in now:  # the application set hooks of its own since: keep them
            module.set_on_retry_hooks(tuple(h for h in now if h is not _stamina_hook))


def _stamina_hook(details: Any) -> None:
    observation = current("stamina")
    if observation is not None:
        record_retry(
            observation,
            "stamina",
            str(details.name),
            attempt=int(details.retry_num),
            delay=float(details.wait_for),
            error=details.caused_by,
        )


# ----------------------------------------------------------------------------- tenacity


def _owned_by_stamina(retrying: Any) -> bool:
    """A Retrying that stamina made (its before_sleep runs stamina's hooks)."""
    before_sleep = getattr(retrying, "before_sleep", None)
    return str(getattr(before_sleep, "__module__", "")).startswith("stamina.")


def _tenacity_retry(retrying: Any, state: Any, delay: float) -> None:
    observation = current("tenacity")
    if observation is None or _owned_by_stamina(retrying):
        return
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    result = outcome.result() if outcome is not None and error is None else None
    name = callable_name(state.fn) if state.fn is not None else str(retrying)
    record_retry(
        observation,
        "tenacity",
        name,
        attempt=int(state.attempt_number),
        delay=delay,
        error=error,
        result=result,
    )


class TenacitySeam:
    """tenacity: ``BaseRetrying.iter`` and ``AsyncRetrying.iter`` wrapped."""

    library: Final[str] = "tenacity"

    def __init__(self) -> None:
        self._patches: list[_Patch] = []

    def check(self) -> str | None:
        tenacity = _module("tenacity")
        if tenacity is None:
            return "tenacity is not installed"
        base = getattr(tenacity, "BaseRetrying", None)
        async_ = getattr(tenacity, "AsyncRetrying", None)
        do_sleep = getattr(tenacity, "DoSleep", None)
        state = getattr(tenacity, "RetryCallState", None)
        if base is None or async_ is None or do_sleep is None or state is None:
            return "tenacity has no BaseRetrying, AsyncRetrying, DoSleep or RetryCallState"
        if "iter" not in base.__dict__ or "iter" not in async_.__dict__:
            return "tenacity's BaseRetrying or AsyncRetrying no longer defines iter"
        if not inspect.iscoroutinefunction(async_.__dict__["iter"]):
            return "tenacity's AsyncRetrying.iter is no longer a coroutine function"
        for cls in (base, async_):
            if list(inspect.signature(cls.__dict__["iter"]).parameters) != ["self", "retry_state"]:
                return f"tenacity's {cls.__name__}.iter takes other arguments"
        probe = state(retry_object=None, fn=None, args=(), kwargs={})
        wanted = ("attempt_number", "outcome", "fn", "upcoming_sleep")
        missing = [a for a in wanted if not hasattr(probe, a)]
        if missing:
            return f"tenacity's RetryCallState has no {', '.join(missing)}"
        return None

    def install(self) -> None:
        tenacity = _module("tenacity")
        assert tenacity is not None
        base, async_, do_sleep = tenacity.BaseRetrying, tenacity.AsyncRetrying, tenacity.DoSleep
        sync_iter, async_iter = base.__dict__["iter"], async_.__dict__["iter"]

        def iter_(self: Any, retry_state: Any) -> Any:
            do = sync_iter(self, retry_state)
            if isinstance(do, do_sleep):
                _tenacity_retry(self, retry_state, do)
            return do

        async def aiter_(self: Any, retry_state: Any) -> Any:
            do = await async_iter(self, retry_state)
            if isinstance(do, do_sleep):
                _tenacity_retry(self, retry_state, do)
            return do

        functools.update_wrapper(iter_, sync_iter)
        functools.update_wrapper(aiter_, async_iter)
        self._patches = [_Patch(base, "iter", iter_), _Patch(async_, "iter", aiter_)]
        for patch in self._patches:
            patch.apply()

    def uninstall(self) -> None:
        _restore(self._patches)


# ------------------------------------------------------------------------------ backoff


def _backoff_retry(details: dict[str, Any]) -> None:
    observation = current("backoff")
    if observation is None:
        return
    record_retry(
        observation,
        "backoff",
        callable_name(details.get("target")),
        attempt=int(details["tries"]),
        delay=float(details["wait"]),
        error=details.get("exception"),
        result=details.get("value"),
    )


class BackoffSeam:
    """backoff: ``_call_handlers`` of ``backoff._sync`` and ``backoff._async`` wrapped; the
    call that runs the ``on_backoff`` handlers is the one with ``wait=``."""

    library: Final[str] = "backoff"

    def __init__(self) -> None:
        self._patches: list[_Patch] = []

    def check(self) -> str | None:
        if _module("backoff") is None:
            return "backoff is not installed"
        for name, is_async in (("backoff._sync", False), ("backoff._async", True)):
            module = _module(name)
            handlers = getattr(module, "_call_handlers", None)
            if handlers is None:
                return f"{name} has no _call_handlers"
            if inspect.iscoroutinefunction(handlers) != is_async:
                return f"{name}._call_handlers is {'not ' if is_async else ''}a coroutine function"
            params = list(inspect.signature(handlers).parameters)
            if params[1:] != ["target", "args", "kwargs", "tries", "elapsed", "extra"]:
                return f"{name}._call_handlers takes other arguments: {params}"
            source = inspect.getsource(module)  # type: ignore[arg-type]
            if "_call_handlers(on_backoff, **details, wait=seconds" not in source:
                return f"{name} no longer runs on_backoff with wait=seconds"
        return None

    def install(self) -> None:
        sync, async_ = _module("backoff._sync"), _module("backoff._async")
        assert sync is not None
        assert async_ is not None
        sync_handlers, async_handlers = sync._call_handlers, async_._call_handlers

        def call_handlers(hdlrs: Any, *args: Any, **kwargs: Any) -> Any:
            if "wait" in kwargs:
                _backoff_retry(kwargs)
            return sync_handlers(hdlrs, *args, **kwargs)

        async def acall_handlers(handlers: Any, **kwargs: Any) -> Any:
            if "wait" in kwargs:
                _backoff_retry(kwargs)
            return await async_handlers(handlers, **kwargs)

        functools.update_wrapper(call_handlers, sync_handlers)
        functools.update_wrapper(acall_handlers, async_handlers)
        self._patches = [
            _Patch(sync, "_call_handlers", call_handlers),
            _Patch(async_, "_call_handlers", acall_handlers),
        ]
        for patch in self._patches:
            patch.apply()

    def uninstall(self) -> None:
        _restore(self._patches)


# ------------------------------------------------------------------------------- openai

#: The logger openai's retry loop logs to, and the message of a retry (openai >= 2.x):
#: ``log.info(OPENAI_RETRY, timeout, retries_taken + 1, max_retries)``.
OPENAI_LOGGER: Final = "openai._base_client"
OPENAI_RETRY: Final = "Retrying request in %f seconds (retry %i of %s)"


def _openai_request_name(error: BaseException | None) -> str:
    """``"POST /v1/chat/completions"`` from the failure's request, else ``"openai"``."""
    try:
        request = getattr(error, "request", None)
    except Exception:  # noqa: BLE001 - httpx raises RuntimeError for an unset request
        request = None
    method, url = getattr(request, "method", None), getattr(request, "url", None)
    path = getattr(url, "path", None)
    return f"{method} {path}" if isinstance(method, str) and isinstance(path, str) else "openai"


class _OpenAIFilter(logging.Filter):
    """Sees every record of the openai client's logger: records its retries, and keeps
    from the handlers the records that the logger's own level would have dropped."""

    def __init__(self, seam: OpenAISeam) -> None:
        super().__init__()
        self.seam = seam

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == OPENAI_RETRY and isinstance(args, tuple) and len(args) == 3:
            delay, retry, _ = args
            observation = current("openai")
            if observation is not None and isinstance(delay, float | int):
                error = sys.exc_info()[1]  # logged inside the except that caught it
                record_retry(
                    observation,
                    "openai",
                    _openai_request_name(error),
                    attempt=int(retry) if isinstance(retry, int) else 0,
                    delay=delay,
                    error=error,
                )
        return record.levelno >= self.seam.level_without_us()


class OpenAISeam:
    """openai: a filter on its client's logger, which logs each retry."""

    library: Final[str] = "openai"

    def __init__(self) -> None:
        self._filter: _OpenAIFilter | None = None
        self._level: int | None = None  # the logger's own level before
        self._set: int | None = None  # the level installed, if it was changed

    def check(self) -> str | None:
        if importlib.util.find_spec("openai") is None:
            return "openai is not installed"
        base = sys.modules.get("openai._base_client")
        if base is None:  # not imported (it costs a second): the logger is there all the same
            return None
        for name in ("SyncAPIClient", "AsyncAPIClient"):
            client = getattr(base, name, None)
            sleep = getattr(client, "_sleep_for_retry", None)
            if sleep is None:
                return f"openai's {name} has no _sleep_for_retry"
            if f'log.info("{OPENAI_RETRY}"' not in inspect.getsource(sleep):
                return f"openai's {name}._sleep_for_retry no longer logs {OPENAI_RETRY!r}"
        if getattr(base, "log", None) is not logging.getLogger(OPENAI_LOGGER):
            return f"openai._base_client no longer logs to {OPENAI_LOGGER!r}"
        return None

    def level_without_us(self) -> int:
        """The level the logger would have now, had the watch not lowered it: its own as it
        was (or as the application set it since), else its parents' as they are now."""
        logger = logging.getLogger(OPENAI_LOGGER)
        own = logger.level if logger.level != self._set else self._level
        if own:
            return own
        parent = logger.parent
        return parent.getEffectiveLevel() if parent is not None else logging.WARNING

    def install(self) -> None:
        # The level must let the INFO records through whatever the parents' levels become
        # while watched (caplog.set_level("openai", ...)), so it is set on the logger itself:
        # its own level if that is INFO or below, else INFO; with none, the lowest (1), not
        # to hide the records that the parents' levels would let through.
        logger = logging.getLogger(OPENAI_LOGGER)
        self._level = logger.level
        self._filter = _OpenAIFilter(self)
        logger.addFilter(self._filter)
        self._set = min(self._level, logging.INFO) if self._level else 1
        if self._set != self._level:
            logger.setLevel(self._set)

    def uninstall(self) -> None:
        logger = logging.getLogger(OPENAI_LOGGER)
        if self._filter is not None:
            logger.removeFilter(self._filter)
        if self._level is not None and logger.level == self._set != self._level:
            logger.setLevel(self._level)  # unless the application set a level of its own since
        self._filter = self._level = self._set = None


#: Every seam, by library: what ``faults.observe.watch()`` observes by default.
SEAMS: Final[dict[str, Seam]] = {
    seam.library: seam for seam in (TenacitySeam(), StaminaSeam(), BackoffSeam(), OpenAISeam())
}
