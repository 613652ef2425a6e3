"""pytest-timeout support, registered as a plugin only when pytest-timeout is there: when
its timer fires, say which fault sites the test was hanging in (:func:`hanging_sites`), on
stderr at once and in the test's report (``resilience: hanging when the timeout fired``),
whichever of pytest-timeout's methods (``signal`` or ``thread``) is in use.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pytest

from pytest_resilience.plugin.state import state_of

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

__all__ = ["hanging_sites", "pytest_timeout_set_timer"]


def hanging_sites() -> list[str]:
    """The fault sites some thread (or the running loop's task) is hanging in right now."""
    sites = sys.modules.get("faults.sites")
    found: list[str] = []
    if sites is None:
        return found
    code = sites.SiteFaults.hang.__code__
    for frame in sys._current_frames().values():
        f: Any = frame
        while f is not None:
            if f.f_code is code:
                owner = f.f_locals.get("self")
                found.append(f"{getattr(owner, 'name', '?')} ({f.f_locals.get('kind', '?')})")
            f = f.f_back
    asyncio = sys.modules.get("asyncio")
    loop = asyncio.events._get_running_loop() if asyncio is not None else None
    if asyncio is not None and loop is not None:
        found += [
            t.get_name().partition("(hung in ")[2].rstrip(")")
            for t in asyncio.all_tasks(loop)
            if "(hung in " in t.get_name()
        ]
    return found


@pytest.hookimpl(wrapper=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> Generator[None, object, object]:
    """Wrap the timer pytest-timeout has just set so that it notes the hanging sites first."""
    result = yield
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    def note() -> None:
        found = hanging_sites()
        if found:
            state_of(item).hanging = found
            sys.stderr.write(f"\nresilience: hanging in {', '.join(found)}\n")

    handler = signal.getsignal(signal.SIGALRM) if hasattr(signal, "SIGALRM") else None
    if getattr(settings, "method", "") == "signal" and callable(handler):

        def on_alarm(signum: int, frame: Any) -> None:
            __tracebackhide__ = True
            note()
            handler(signum, frame)

        signal.signal(signal.SIGALRM, on_alarm)
    else:
        for thread in threading.enumerate():
            function = getattr(thread, "function", None)
            if thread.name.endswith(item.nodeid) and callable(function):
                thread.function = _before(note, function)  # type: ignore[attr-defined]
    return result


def _before(first: Callable[[], None], then: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        first()
        return then(*args, **kwargs)

    return run
