"""The pytest plugin's entry point (``pytest11: resilience``), the one module pytest loads, so
that ``-p no:resilience`` turns all of the plugin off. It gathers the hooks and fixtures of
the plugin's modules (:mod:`.options`, :mod:`.collection`, :mod:`.running`, :mod:`.report`,
:mod:`.fixture_decls`, :mod:`.scenario_files`) so that pytest sees each exactly once, as
part of this one plugin; adds the hooks a suite may implement (:mod:`.hookspecs`); and at
configure time resolves the run's settings and registers the summary's reporter, the
judging of each test's verdicts (:mod:`.verdicts`), the detector of one ``llama_cpp.Llama``
used by two generations at once (:mod:`.model_use`), and what only some runs need: the
autouse leak check, and the pytest-xdist and pytest-timeout support; and crash isolation
(:mod:`.isolate`); under ``--fault-sweep``, the sweep (:mod:`.sweep`). Inside the package
the imports point one way, from this module down to :mod:`.state`, which imports none of
the others; none of them imports anything heavy at module level (each hook imports what it
needs when it runs, and a run without faults never imports :mod:`faults`), as pytest
imports this in every run of every user of the package.
"""

from __future__ import annotations

import pytest

from pytest_resilience.plugin import hookspecs, model_use, timeout_hooks, verdicts, xdist_hooks
from pytest_resilience.plugin.collection import pytest_collection_modifyitems
from pytest_resilience.plugin.fixture_decls import (
    LeakCheckPlugin,
    _resilience_daemon_process,
    clock,
    daemon,
    faults,
    journal,
    leak_check,
    llama,
    resilient_client,
    tiny_model,
)
from pytest_resilience.plugin.isolate import Isolation
from pytest_resilience.plugin.options import (
    ENVIRONMENT,
    MARKERS,
    concurrent_model_check,
    in_virtual_time,
    isolating,
    pytest_addoption,
    resolve,
)
from pytest_resilience.plugin.report import (
    Reporter,
    pytest_report_header,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
from pytest_resilience.plugin.running import (
    pytest_runtest_call,
    pytest_runtest_protocol,
    pytest_runtest_setup,
)
from pytest_resilience.plugin.scenario_files import pytest_collect_file
from pytest_resilience.plugin.state import (
    SETTINGS,
    SHARED_DAEMON,
    Settings,
    TestState,
    settings_of,
    state_of,
)

# What suites import from here (ENVIRONMENT, settings_of, ...), and the hooks and fixtures
# pytest finds here: this module's namespace is the plugin.
__all__ = [
    "ENVIRONMENT",
    "SHARED_DAEMON",
    "Settings",
    "TestState",
    "_resilience_daemon_process",
    "clock",
    "daemon",
    "faults",
    "in_virtual_time",
    "journal",
    "leak_check",
    "llama",
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_collect_file",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_call",
    "pytest_runtest_makereport",
    "pytest_runtest_protocol",
    "pytest_runtest_setup",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
    "resilient_client",
    "settings_of",
    "state_of",
    "tiny_model",
]


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """The hooks a suite may implement: see :mod:`.hookspecs`."""
    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(trylast=True)  # after the cache provider has set config.cache
def pytest_configure(config: pytest.Config) -> None:
    """Declare the markers, resolve the run's settings, register what this run needs."""
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    settings = resolve(config)
    config.stash[SETTINGS] = settings
    config.pluginmanager.register(Reporter(settings.totals), "resilience-reporter")
    config.pluginmanager.register(verdicts, "resilience-verdicts")
    config.pluginmanager.register(Isolation(isolating(config)), "resilience-isolate")
    model_use.turn(concurrent_model_check(config))  # undone by its pytest_unconfigure
    config.pluginmanager.register(model_use, "resilience-model-use")
    if settings.leak_check:
        config.pluginmanager.register(LeakCheckPlugin(), "resilience-leak-check")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(xdist_hooks, "resilience-xdist")
    if config.pluginmanager.hasplugin("timeout"):
        config.pluginmanager.register(timeout_hooks, "resilience-timeout")
    if config.getoption("resilience_fault_sweep", False):
        from pytest_resilience.plugin.sweep import SweepPlugin  # noqa: PLC0415 - sweeps only

        config.pluginmanager.register(SweepPlugin(config), "resilience-sweep")
