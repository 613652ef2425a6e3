"""Collection: each test's ``faults`` markers are parsed (and checked installable) once,
as the tests are collected, so that a bad one is a usage error before any test runs, and
merged into the spec the test runs under (:func:`effective_spec`: the run-wide spec, with
the markers' sites replacing its own, or nothing under ``no_faults``); a test that runs in
virtual time is given the ``clock`` fixture as if it had named it, set up before its other
function-scoped fixtures (an async fixture makes the test's event loop, which must be the
clock's), and a run with a virtual-time pytest-asyncio test routes the event loops through
the test clocks for the session (:mod:`.async_time`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_resilience.plugin.options import in_virtual_time, parse_spec, route_of
from pytest_resilience.plugin.state import MARKER_SPEC, SETTINGS, Settings

if TYPE_CHECKING:
    from faults.spec import Spec

__all__ = ["effective_spec", "pytest_collection_modifyitems"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Parse every ``faults`` marker now, so a bad one is a usage error before any test;
    give the ``clock`` fixture to the tests that run in virtual time."""
    settings = config.stash[SETTINGS]
    for spec, where in settings.sources:
        _check_installable(spec, where)
    async_virtual = False
    for item in items:
        markers = [m for m in item.iter_markers("faults") if m.args or "spec" in m.kwargs]
        route_of(item)  # a bad route= is a usage error now
        if markers:
            specs = []
            for marker in reversed(markers):  # farthest (module, class) first
                text = marker.kwargs.get("spec", marker.args[0] if marker.args else None)
                path, line, _ = item.location
                where = f"@pytest.mark.faults on {item.nodeid} ({path}:{(line or 0) + 1})"
                if not isinstance(text, str):
                    raise pytest.UsageError(f"{where}: expected a fault spec string, got {text!r}")
                specs.append(parse_spec(text, where, config.invocation_params.dir))
                _check_installable(specs[-1], where)
            from faults.spec import merge  # noqa: PLC0415

            item.stash[MARKER_SPEC] = merge(*specs)
        if in_virtual_time(item, settings):
            _clock_first(item)
            async_virtual = async_virtual or item.get_closest_marker("asyncio") is not None
    if async_virtual:
        from pytest_resilience.plugin.async_time import install_for_session  # noqa: PLC0415

        install_for_session(config)


def _clock_first(item: pytest.Item) -> None:
    """Request ``clock`` for ``item`` as if named in its signature, first of its
    function-scoped fixtures: those set up after it make their event loops on it."""
    names = getattr(item, "fixturenames", None)
    if not isinstance(names, list):
        return
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})

    def function_scoped(name: str) -> bool:
        fixturedefs = defs.get(name)
        return not fixturedefs or fixturedefs[-1].scope == "function"

    if "clock" in names:
        names.remove("clock")
    names.insert(next((i for i, n in enumerate(names) if function_scoped(n)), len(names)), "clock")


def _check_installable(spec: Spec, where: str) -> None:
    """What would fail every test is a usage error now, once: a ``py:`` site whose module or
    attribute does not exist, a ``raise`` of a type that does not resolve or that ``raise``
    refuses. Test modules are imported by now, so sys.path is as the tests see it."""
    from faults.sites.base import check_terms  # noqa: PLC0415
    from faults.sites.py import resolve  # noqa: PLC0415
    from faults.spec import SpecError  # noqa: PLC0415

    for entry in spec.entries:
        try:
            check_terms(entry)
            if entry.site.family == "py":
                resolve(entry)
        except SpecError as exc:
            raise pytest.UsageError(f"{where}: {exc}") from None


def effective_spec(item: pytest.Item, settings: Settings) -> Spec | None:
    """The spec ``item`` runs under: none under ``no_faults``, else the run-wide spec with
    the sites of the test's ``faults`` markers replacing its own."""
    if item.get_closest_marker("no_faults") is not None:
        return None
    marker = item.stash.get(MARKER_SPEC, None)
    if marker is None:
        return settings.spec
    if settings.spec is None:
        return marker
    return settings.spec.merged(marker)
