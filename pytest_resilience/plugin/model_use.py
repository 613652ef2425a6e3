"""The detector of one ``llama_cpp.Llama`` used by two generations at once
(:mod:`faults.model_use`), on in every test once ``llama_cpp`` is imported, and the
``stream-closed`` verdict it feeds.

The entry point registers this module as a plugin of its own when
``resilience_concurrent_model_check`` is true (the default). At configure time, if
``llama_cpp.llama`` is imported already, the detector is installed and turned on; otherwise
an import hook (a :data:`sys.meta_path` finder that only answers for ``llama_cpp.llama``)
does it right after that module runs, so that nothing is imported before the suite needs
it. Each configuration turns it on (or, with the ini key false, off) for as long as it
lives: a pytest run inside a test (pytester) may turn it off for itself.

Around each test: at setup, the patches are checked (an injection installed before the
detector may have restored the original ``embed``) and the streams opened so far are noted;
after teardown, in a test whose verdicts are judged (a fault fired), the llama streams it
opened and left neither exhausted nor closed break ``stream-closed``, reported as the other
verdicts are (:mod:`.verdicts`).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import TYPE_CHECKING, Any, Final

import pytest

from pytest_resilience.plugin.state import STATE

if TYPE_CHECKING:
    from collections.abc import Generator, Sequence
    from types import ModuleType

__all__ = [
    "pytest_runtest_setup",
    "pytest_runtest_teardown",
    "pytest_unconfigure",
    "turn",
]

_MODULE: Final = "llama_cpp.llama"
_DETECTOR: Final = "faults.model_use"
_SINCE: Final = pytest.StashKey[int]()
#: What each live configuration asked for, before the detector could be imported.
_pending: list[bool] = []


def _detector() -> Any:
    return sys.modules.get(_DETECTOR)


def _activate(llama: type) -> None:
    from faults import model_use  # noqa: PLC0415 - llama_cpp is loaded: it is needed now

    model_use.install(llama)
    while _pending:
        model_use.push(_pending.pop(0))


class _Loader(importlib.abc.Loader):
    """Runs ``llama_cpp.llama`` with its own loader, then installs the detector."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _unhook()
        llama = getattr(module, "Llama", None)
        if isinstance(llama, type):
            _activate(llama)


class _Finder(importlib.abc.MetaPathFinder):
    """Answers for ``llama_cpp.llama`` only: the other finders' spec, with our loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


_FINDER = _Finder()


def _unhook() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def turn(on: bool) -> None:
    """Turn the detector on (or off) for a configuration that begins, until its end
    (:func:`pytest_unconfigure`)."""
    loaded = sys.modules.get(_MODULE)
    llama = getattr(loaded, "Llama", None)
    if isinstance(llama, type):
        _pending.append(on)
        _activate(llama)
        return
    _pending.append(on)
    if any(_pending) and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The configuration ends: what it asked for no longer holds."""
    if _pending:
        _pending.pop()
        if not _pending:
            _unhook()
        return
    detector = _detector()
    if detector is not None:
        detector.pop()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Put back a patch an injection took away; note the streams opened before the test."""
    detector = _detector()
    if detector is not None and detector.is_on():
        detector.ensure()
        item.stash[_SINCE] = detector.serial()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """Judge ``stream-closed`` once every fixture is finalised."""
    try:
        return (yield)
    finally:
        _judge_streams(item)


def _judge_streams(item: pytest.Item) -> None:
    state = item.stash.get(STATE, None)
    detector = _detector()
    if state is None or not state.judged or detector is None:
        return
    from faults.verdicts import VERDICTS, judge  # noqa: PLC0415 - a fault fired
    from pytest_resilience.plugin import verdicts  # noqa: PLC0415

    if "stream-closed" in verdicts.mode_of(item)[1]:
        return
    left = detector.open_streams(item.stash.get(_SINCE, 0))
    if not left:
        return
    others = tuple(v for v in VERDICTS if v != "stream-closed")
    broken = judge(state.journal.events(), open_streams=left, ignore=others)
    state.verdicts.extend(broken)
    if not item.stash.get(verdicts._FAILED, False) and sys.exc_info()[1] is None:
        verdicts._report(item, broken)
