"""``pytest --fault-sweep``: which faults does this suite survive?

Registered by :mod:`.hooks` only when ``--fault-sweep`` is given. The run has two phases,
both in this one pytest session (its plugins, the tiny model and the daemon are the
session's):

1. **The fault-free pass** is the run itself: every test runs, logged as usual, under a
   run-wide spec whose every site is ``off`` (the built-in ``llama.*`` sites when
   llama-cpp-python is installed, the ``daemon.*`` sites, and the ``py:`` sites of the ini
   list ``resilience_sweep_sites``). ``off`` passes every call through and counts it, so
   after each test the plugin knows the sites it reached, and how long it took.
2. **The cells**, once the loop is done (on each pytest-xdist worker, over the tests it
   ran): for each test that passed, each site it reached and each fault of that site's set
   (:data:`faults.sweep.DEFAULT_FAULTS`, changed by ``--fault-sweep-faults``), the test is
   run again (``runtestprotocol``, unlogged) with that one fault as its run-wide spec, first
   as ``1*fault`` then as ``fault``: in virtual time, under the run's seed, with a real-time
   limit (``--fault-sweep-cell-timeout``) that ends a cell stuck in real time as hung.

The last test of the pass leaves the session's fixtures (the tiny model, a session daemon)
set up for the cells. A failing cell's traceback is Python's own, from the test function
down: pytest's long report would cost it more than its test's run.

Each cell ends as survived, failed, hung, leaked or not reached (:mod:`faults.sweep`). The
summary shows the matrix; ``--fault-sweep-json`` and ``--fault-sweep-html`` write every
cell with its reproducing command. Without ``--fault-sweep-baseline`` a cell that failed,
hung or leaked fails the run; with one, only a cell that got worse does.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Final

import pytest

from pytest_resilience.plugin.running import reproduce_command
from pytest_resilience.plugin.state import SETTINGS, STATE, Settings

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator
    from pathlib import Path
    from types import TracebackType

    from faults.spec import Site, Spec
    from faults.sweep import Budget, Cell, Result

__all__ = ["WORKER_OUTPUT", "CellTimedOut", "SweepPlugin", "sweep_requested"]

#: The key of a worker's sweep (its JSON) in ``workeroutput``, for the xdist controller.
WORKER_OUTPUT: Final = "resilience_fault_sweep"
_DEFAULT_CELL_TIMEOUT: Final = 60.0  # real seconds; virtual-time hangs end long before
_TRACEBACK_CHARS: Final = 6000


class CellTimedOut(BaseException):
    """A cell waited longer than ``--fault-sweep-cell-timeout`` in real time. A
    ``BaseException``, so that the app's ``except Exception`` cannot swallow it."""


def sweep_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("resilience_fault_sweep", False))


class SweepPlugin:
    """The sweep of one pytest process (the controller, a worker, or a run without xdist)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.settings: Settings = config.stash[SETTINGS]
        if self.settings.spec is not None or self.settings.replay is not None:
            raise pytest.UsageError(
                "--fault-sweep chooses each cell's faults itself: drop --inject-faults and "
                "--replay-journal (and their ini keys and environment variables)"
            )
        self.given = _fault_sets(config)
        self.budget = _budget(config)
        self.cell_timeout = _cell_timeout(config)
        self.py_sites = _py_sites(config)
        from faults.sweep import Sweep  # noqa: PLC0415

        self.sweep = Sweep(seed=self.settings.seed)
        self.off = _fault_free_spec(self.py_sites)
        # every cell, and the fault-free pass, runs in virtual time (real_time tests excepted)
        self.settings.virtual_time = True
        self.settings.spec = self.off
        self.settings.reach_only = True  # no fault: the report shows none for the pass
        self.items: dict[str, pytest.Item] = {}
        self.reached: dict[str, list[str]] = {}
        self.cost: dict[str, float] = {}
        self.comparison: Any = None
        self.workers = 0

    # ------------------------------------------------------------------ the fault-free pass

    def pytest_report_header(self) -> list[str]:
        sites = ", ".join(str(e.site) for e in self.off.entries)
        return [f"resilience: fault sweep over {sites}"]

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """A ``py:`` site of ``resilience_sweep_sites`` that cannot be patched is a usage
        error now (the test modules are imported, so sys.path is as the tests see it)."""
        from faults.sites.py import resolve  # noqa: PLC0415
        from faults.spec import SpecError  # noqa: PLC0415

        for entry in self.off.entries:
            if entry.site.family == "py":
                try:
                    resolve(entry)
                except SpecError as exc:
                    raise pytest.UsageError(
                        f"ini option resilience_sweep_sites ({self.config.inipath}): {exc}"
                    ) from None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> object:
        """Run the last test as every other, but keep the session's fixtures (the tiny model,
        a session daemon) for the cells: tear down to the session, not past it. The cells'
        last one, or the session's end, tears the rest down."""
        if nextitem is not None:
            return None
        item.ihook.pytest_runtest_protocol(item=item, nextitem=item.session)
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report: pytest.TestReport = yield
        if item.nodeid in self.reached:
            return report  # a cell's run: _run_cell reads its reports
        self.cost[item.nodeid] = self.cost.get(item.nodeid, 0.0) + report.duration
        if report.failed or report.skipped:
            why = "failed" if report.failed else "skipped"
            self.sweep.excluded[item.nodeid] = f"{why} without faults"
        if call.when == "teardown":
            self.items[item.nodeid] = item
            self.sweep.tests.append(item.nodeid)
            self.reached[item.nodeid] = self._reached(item)
        return report

    def _reached(self, item: pytest.Item) -> list[str]:
        if item.get_closest_marker("no_faults") is not None:
            self.sweep.excluded.setdefault(item.nodeid, "marked no_faults")
            return []
        state = item.stash.get(STATE, None)
        reach = {} if state is None else state.reach
        return [str(e.site) for e in self.off.entries if reach.get(str(e.site), [0])[0]]

    # ------------------------------------------------------------------------- the cells

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        result = yield
        if not self.items or session.shouldfail or session.shouldstop:
            return result
        from faults.sweep import choose, plan  # noqa: PLC0415

        started = time.perf_counter()
        reached = {t: s for t, s in self.reached.items() if t not in self.sweep.excluded}
        cells = plan(reached, self.given)
        per_cell = {t: self.cost.get(t, 0.0) for t in reached}
        self.sweep.plain = {t: round(s, 4) for t, s in per_cell.items()}
        budget = self._worker_budget()
        chosen, self.sweep.left_out = choose(cells, budget, per_cell)
        self.sweep.estimate = sum(per_cell[c.test] for c in chosen)
        self._announce(len(cells), chosen, budget)
        for i, cell in enumerate(chosen):
            over = budget is not None and budget.seconds is not None
            if over and time.perf_counter() - started > budget.seconds:  # type: ignore[union-attr,operator]
                self.sweep.left_out += chosen[i:]
                break
            nextitem = self.items[chosen[i + 1].test] if i + 1 < len(chosen) else None
            if nextitem is not None and nextitem is self.items[cell.test]:
                # the same test again: tear down its own fixtures, keep its module's and
                # the session's (teardown_exact reads nothing of it but its chain)
                nextitem = nextitem.parent  # type: ignore[assignment]
            self.sweep.results.append(self._run_cell(self.items[cell.test], cell, nextitem))
        self.sweep.seconds = time.perf_counter() - started
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput[WORKER_OUTPUT] = self.sweep.to_json()
        return result

    def _worker_budget(self) -> Budget | None:
        """The budget, its cells shared out among the xdist workers."""
        from faults.sweep import Budget  # noqa: PLC0415

        workerinput = getattr(self.config, "workerinput", None)
        count = int(workerinput.get("workercount", 1)) if workerinput else 1
        if self.budget is None or self.budget.cells is None or count <= 1:
            return self.budget
        return Budget(cells=-(-self.budget.cells // count))

    def _announce(self, total: int, chosen: list[Cell], budget: Budget | None) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or hasattr(self.config, "workerinput"):
            return
        tests = len({c.test for c in chosen})
        text = f"fault sweep: {total} cells over {_many(len(self.reached), 'test')}"
        if budget is not None:
            text += f"; the budget ({budget}) keeps {len(chosen)}"
        text += f"; estimated {_seconds(self.sweep.estimate)} for {len(chosen)} cells of "
        text += f"{_many(tests, 'test')} (from the fault-free pass)"
        reporter.ensure_newline()  # after a verbose run's last line
        writer = self.config.get_terminal_writer()
        if writer.width_of_current_line:  # after the progress dots of a quiet one
            writer.line()
        reporter.write_line(text)

    def _run_cell(self, item: pytest.Item, cell: Cell, nextitem: Any) -> Result:
        from _pytest.runner import runtestprotocol  # noqa: PLC0415

        from faults.parser import parse  # noqa: PLC0415
        from pytest_resilience.core.seeding import seeded  # noqa: PLC0415
        from pytest_resilience.plugin.fixtures import LeakCheck  # noqa: PLC0415

        spec = parse(cell.spec)
        for key in (STATE, LeakCheck.REPORTED):
            if key in item.stash:  # type: ignore[misc]  # two keys of two types
                del item.stash[key]  # type: ignore[misc]
        item.user_properties.clear()
        setattr(item, "_report_sections", [])  # noqa: B010 - pytest's own, reset per run as rerunfailures does
        self.settings.spec, self.settings.reach_only = spec, False
        setattr(item, "repr_failure", _native_repr(item))  # noqa: B010 - this run's only
        started = time.perf_counter()
        try:
            with seeded(self.settings.seed, item.nodeid), self._real_time_limit():
                reports = runtestprotocol(item, nextitem=nextitem, log=False)
        finally:
            self.settings.spec, self.settings.reach_only = self.off, True
            delattr(item, "repr_failure")
        seconds = time.perf_counter() - started
        return self._result(item, cell, spec, reports, seconds)

    def _real_time_limit(self) -> Any:
        """Raise :class:`CellTimedOut` in the main thread once the cell's real time is up
        (SIGALRM; where there is none, or off the main thread, no limit)."""
        import contextlib  # noqa: PLC0415

        limit = self.cell_timeout
        usable = (
            hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
        )
        if not usable or limit <= 0:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def armed() -> Iterator[None]:
            def on_alarm(signum: int, frame: Any) -> None:
                raise CellTimedOut(f"the cell waited {limit:g} s of real time")

            previous = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                yield
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)

        return armed()

    def _result(
        self,
        item: pytest.Item,
        cell: Cell,
        spec: Spec,
        reports: list[pytest.TestReport],
        seconds: float,
    ) -> Result:
        from faults.sweep import Result  # noqa: PLC0415

        state = item.stash.get(STATE, None)
        reach = {} if state is None else state.reach
        injected = int(reach.get(cell.site, [0, 0])[1])
        failed = next((r for r in reports if r.failed), None)
        error = traceback = ""
        if failed is not None:
            error, traceback = _error_of(failed)
            if "HangDetected" in error or CellTimedOut.__name__ in error:
                outcome = "hung"
            elif failed.when == "teardown" and state is not None and state.leaks:
                outcome = "leaked"
            else:
                outcome = "failed"
        elif any(r.skipped for r in reports):
            outcome = "skipped"
        elif not injected:
            outcome = "not reached"
        else:
            outcome = "survived"
        return Result(
            test=cell.test,
            site=cell.site,
            fault=cell.fault,
            first=cell.first,
            outcome=outcome,
            command=reproduce_command(item, spec),
            error=error,
            traceback=traceback,
            seconds=round(seconds, 4),
            injected=injected,
        )

    # ------------------------------------------------------------------------ the results

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """On the xdist controller: add a worker's cells."""
        from faults.sweep import Sweep  # noqa: PLC0415

        text = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
        if text is not None:
            self.workers += 1
            self.sweep.merge(Sweep.from_json(text))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write the JSON and HTML files, compare with the baseline, and fail the run for
        the cells that did not survive (or, with a baseline, that got worse)."""
        if hasattr(self.config, "workerinput"):
            return
        from faults.sweep import BAD, Sweep, compare  # noqa: PLC0415

        base = self.config.invocation_params.dir
        json_path = _path_option(self.config, "resilience_fault_sweep_json")
        if json_path is not None:
            (base / json_path).write_text(self.sweep.to_json(), encoding="utf-8")
        html_path = _path_option(self.config, "resilience_fault_sweep_html")
        if html_path is not None:
            from faults.sweep_html import render  # noqa: PLC0415

            (base / html_path).write_text(render(self.sweep), encoding="utf-8")
        baseline = _path_option(self.config, "resilience_fault_sweep_baseline")
        if baseline is not None:
            try:
                before = Sweep.from_json((base / baseline).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise pytest.UsageError(f"--fault-sweep-baseline {baseline}: {exc}") from None
            self.comparison = compare(before, self.sweep)
            failing = bool(self.comparison.worse)
        else:
            failing = any(r.outcome in BAD for r in self.sweep.results)
        if failing and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from faults.sweep import BAD, matrix  # noqa: PLC0415

        terminalreporter.section("fault sweep")
        write = terminalreporter.write_line
        if self.workers:
            write(
                f"{self.workers} workers swept the tests each ran; estimated "
                f"{_seconds(self.sweep.estimate)} of cells in all, before they ran"
            )
        write(matrix(self.sweep))
        for test, why in sorted(self.sweep.excluded.items()):
            write(f"not swept: {test} ({why})")
        write(f"swept in {_seconds(self.sweep.seconds)}")
        if self.comparison is not None:
            for r, was in self.comparison.worse:
                write(f"worse than the baseline: {r.test} {r.spec}: {was} -> {r.outcome}")
            for r, was in self.comparison.better:
                write(f"better than the baseline: {r.test} {r.spec}: {was} -> {r.outcome}")
            if self.comparison.new:
                write(f"new since the baseline: {len(self.comparison.new)} cells")
            worse = len(self.comparison.worse)
            write(
                f"fault sweep: {worse} cells got worse than the baseline"
                if worse
                else "fault sweep: no cell got worse than the baseline"
            )
        else:
            bad = sum(r.outcome in BAD for r in self.sweep.results)
            if bad:
                write(f"fault sweep: {bad} cells failed, hung or leaked")


def _fault_sets(config: pytest.Config) -> dict[Site, tuple[bool, tuple[str, ...]]]:
    """``resilience_sweep_faults`` (ini lines), then ``--fault-sweep-faults``: a later
    value's sites replace an earlier one's."""
    from faults.spec import SpecError  # noqa: PLC0415
    from faults.sweep import parse_faults  # noqa: PLC0415

    values = [(str(v), f"ini option resilience_sweep_faults ({config.inipath})")
              for v in config.getini("resilience_sweep_faults") if str(v).strip()]  # fmt: skip
    given = config.getoption("resilience_fault_sweep_faults") or ()
    values += [(v, "--fault-sweep-faults") for v in given]
    found: dict[Site, tuple[bool, tuple[str, ...]]] = {}
    for text, where in values:
        try:
            found.update(parse_faults(text))
        except SpecError as exc:
            raise pytest.UsageError(f"{where}: malformed fault set: {exc}") from None
    return found


def _budget(config: pytest.Config) -> Budget | None:
    from faults.sweep import parse_budget  # noqa: PLC0415

    text = config.getoption("resilience_fault_sweep_budget")
    if text is None:
        return None
    try:
        return parse_budget(str(text))
    except ValueError as exc:
        raise pytest.UsageError(f"--fault-sweep-budget: {exc}") from None


def _cell_timeout(config: pytest.Config) -> float:
    from faults.sweep import parse_budget  # noqa: PLC0415

    text = config.getoption("resilience_fault_sweep_cell_timeout")
    if text is None:
        return _DEFAULT_CELL_TIMEOUT
    try:
        seconds = parse_budget(str(text)).seconds
    except ValueError:
        seconds = None
    if seconds is None:
        raise pytest.UsageError(
            f"--fault-sweep-cell-timeout: expected a duration (90s), not {text!r}"
        )
    return seconds


def _py_sites(config: pytest.Config) -> list[Site]:
    from faults.spec import Site, SpecError  # noqa: PLC0415

    sites: list[Site] = []
    for line in config.getini("resilience_sweep_sites"):
        text = str(line).strip()
        if not text:
            continue
        try:
            site = Site.parse(text)
        except SpecError as exc:
            raise pytest.UsageError(
                f"ini option resilience_sweep_sites ({config.inipath}): {exc}"
            ) from None
        if site.family != "py":
            raise pytest.UsageError(
                f"ini option resilience_sweep_sites ({config.inipath}): {text} is a built-in "
                "site, always swept; list py:MODULE:QUALNAME sites here"
            )
        sites.append(site)
    return sites


def _fault_free_spec(py_sites: list[Site]) -> Spec:
    """Every site ``off``: the built-in ones (``llama.*`` only with llama-cpp-python
    installed), then the ``py:`` ones."""
    import importlib.util  # noqa: PLC0415

    from faults.kinds import BUILTIN_SITES  # noqa: PLC0415
    from faults.spec import Entry, Site, Spec, Term  # noqa: PLC0415

    llama = importlib.util.find_spec("llama_cpp") is not None
    sites = [Site.parse(s) for s in BUILTIN_SITES if llama or not s.startswith("llama.")]
    return Spec(tuple(Entry(site, (Term("off"),)) for site in [*sites, *py_sites]))


def _native_repr(item: pytest.Item) -> Any:
    """``item.repr_failure`` for a cell: Python's own traceback from the test function down.
    pytest's long one reads and parses the source of every frame, which costs a failing
    cell more than its test's own run."""
    plain = item.repr_failure
    code = getattr(getattr(item, "obj", None), "__code__", None)

    def repr_failure(excinfo: pytest.ExceptionInfo[BaseException]) -> object:
        value = excinfo.value
        if isinstance(value, pytest.fail.Exception) and not value.pytrace:
            return plain(excinfo)  # the message alone
        tb: TracebackType | None = excinfo.tb
        while tb is not None and tb.tb_frame.f_code is not code:
            tb = tb.tb_next
        cut = pytest.ExceptionInfo.from_exc_info((type(value), value, tb or excinfo.tb))
        return cut.getrepr(style="native")

    return repr_failure


def _error_of(report: pytest.TestReport) -> tuple[str, str]:
    """The first line of a failed report's error, and its whole text (shortened)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = str(getattr(crash, "message", "") or report.longreprtext)
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    if report.when != "call":
        first = f"{report.when}: {first}"
    text = report.longreprtext
    if len(text) > _TRACEBACK_CHARS:
        text = "…" + text[-_TRACEBACK_CHARS:]
    return first[:300], text


def _path_option(config: pytest.Config, name: str) -> Path | None:
    from pathlib import Path  # noqa: PLC0415

    value = config.getoption(name)
    return None if value is None else Path(os.fspath(value))


def _many(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _seconds(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:.0f} s"
    return f"{seconds:.2g} s" if seconds < 1 else f"{seconds:.3g} s"
