"""Crash isolation: a test whose faults can abort its process runs in a child of its own.

llama.cpp aborts the whole process (SIGABRT) on a failed assert instead of raising, and the
``crash`` fault does the same. A test that can meet one (``crash`` in its ``faults``
marker, in the run's ``--inject-faults`` or replayed journal, or in a scenario file's
``[faults]``), and every test under ``--isolate`` (ini ``resilience_isolate``), runs in a
forked child: the child runs the test's setup, call and teardown and sends each phase's
report, its warnings and, just before an injected crash aborts it, the crash's site, to
this process through a pipe. This process logs the reports as if it had run the test
(pytest-xdist forwards them from a worker as usual); when the child dies by a signal it
reports the phase that was running as failed, ``crashed (SIGABRT) at llama.generate``,
with what the child wrote to stdout and stderr in it, the command that reproduces it, and
the test's figures (a fault at the site, ``crashed``), and the run goes on.

The child tears down what it set up itself; fixtures of wider scope that this process set
up before are left to this process. Fixtures of wider scope that the child set up are torn
down in the child, so an isolated test sets them up afresh. The leak check runs inside the
child, around the test only: the pipe and the child itself are not the test's.

In the pytest process itself, a crash fault that fires (from the ``faults`` fixture, say,
in a test that is not isolated) fails the test instead of aborting the run.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import pickle
import select
import signal
import struct
import sys
import warnings
from typing import TYPE_CHECKING, Any, Final, Literal

import pytest

from pytest_resilience.plugin.collection import effective_spec
from pytest_resilience.plugin.report import _CRASHED, _PROP, _REPRO, _figures
from pytest_resilience.plugin.running import _node_argument, _quote, reproduce_command
from pytest_resilience.plugin.scenario_files import ScenarioItem
from pytest_resilience.plugin.state import MARKER_SPEC, SETTINGS, TestState

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable

    from faults.spec import Spec

__all__ = ["Isolation", "can_crash"]

Phase = Literal["setup", "call", "teardown"]
_HEADER: Final = struct.Struct(">I")
_child_pid = -1  # set in the child that runs an isolated test


def _crashes(spec: Spec | None) -> bool:
    return spec is not None and any(t.kind == "crash" for e in spec.entries for t in e.chain)


def can_crash(item: pytest.Item) -> bool:
    """Whether ``item``'s faults can abort its process: ``crash`` in the spec it runs under
    (its markers', the run's, a replayed journal's) or in its scenario file."""
    settings = item.config.stash[SETTINGS]
    if isinstance(item, ScenarioItem):
        from faults.scenario import ScenarioError, spec_of  # noqa: PLC0415

        try:
            return _crashes(spec_of(item.path))
        except ScenarioError:
            return False  # the scenario reports its own error when it runs
    if item.get_closest_marker("no_faults") is not None:
        return False
    if _crashes(item.stash.get(MARKER_SPEC, None)) or _crashes(effective_spec(item, settings)):
        return True
    return settings.replay is not None and _crashes(settings.replay.spec)


class Isolation:
    """The plugin object: runs the tests that need it in a child process of their own."""

    def __init__(self, every_test: bool) -> None:
        self.every_test = every_test
        self.guarded = -1  # the process whose crash faults fail the test instead

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        if not hasattr(os, "fork") or not (self.every_test or can_crash(item)):
            return None
        import faults.effects  # noqa: PLC0415, F401 - once here, not in every child

        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in _run_isolated(item):
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        """In the pytest process, make a crash fault fail the test instead of the run."""
        effects = sys.modules.get("faults.effects")
        if effects is None or self.guarded == os.getpid() or _child_pid == os.getpid():
            return
        self.guarded = pid = os.getpid()

        def refuse(site: str) -> None:
            if os.getpid() == pid:
                pytest.fail(
                    f"a crash fault fired at {site} in the pytest process itself, which it "
                    "would abort: name crash in the test's faults marker (or --inject-faults), "
                    "or run with --isolate, so that the test runs in a process of its own",
                    pytrace=False,
                )

        effects.on_crash(refuse)


# ----------------------------------------------------------------------- the child


class _Pipe:
    """Length-prefixed pickles on a pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message)
        view = memoryview(_HEADER.pack(len(data)) + data)
        while view:
            view = view[os.write(self.fd, view) :]


class _Sender:
    """Registered in the child only: sends each phase's report as soon as it is made."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        config = item.config
        data = config.hook.pytest_report_to_serializable(config=config, report=report)
        self.pipe.send(("report", data))
        return report


def _leave_the_parents_fixtures(item: pytest.Item) -> None:
    """What this process set up before the fork is the parent's to tear down: the child
    forgets those finalizers, and a fixture already cached does not finish here."""
    stack = item.session._setupstate.stack
    for node, (_, exc) in list(stack.items()):
        stack[node] = ([], exc)
    info = getattr(item, "_fixtureinfo", None)
    for defs in getattr(info, "name2fixturedefs", {}).values():
        for fixturedef in defs:
            if fixturedef.cached_result is not None:
                fixturedef.finish = lambda request: None


def _child(item: pytest.Item, fd: int) -> None:
    """Run the test in this (forked) process and tell the parent; never returns."""
    global _child_pid
    code = 0
    pipe = _Pipe(fd)
    try:
        me = _child_pid = os.getpid()

        def last_words(site: str) -> None:
            if os.getpid() == me:  # not in a process the test forked in turn
                pipe.send(("crash", site))

        from faults.effects import on_crash  # noqa: PLC0415

        on_crash(last_words)
        if faulthandler.is_enabled():  # its dump of a crash goes into the captured stderr
            faulthandler.enable(file=2, all_threads=True)
        item.config.pluginmanager.register(_Sender(pipe), "resilience-isolated-child")
        _leave_the_parents_fixtures(item)
        from _pytest.runner import runtestprotocol  # noqa: PLC0415

        with warnings.catch_warnings(record=True) as caught:  # the filters stay as they are
            runtestprotocol(item, log=False, nextitem=None)
        for w in caught:
            pipe.send(("warning", *_warning(w)))
        pipe.send(("done",))
    except BaseException as exc:  # noqa: BLE001 - anything left is the parent's to report
        code = 4
        with contextlib.suppress(BaseException):
            pipe.send(
                ("error", f"{type(exc).__name__}: {exc}", isinstance(exc, pytest.exit.Exception))
            )
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _warning(w: warnings.WarningMessage) -> tuple[bytes, str, str, int]:
    try:
        category = pickle.dumps(w.category)
    except Exception:  # noqa: BLE001 - a class pickle cannot name: a UserWarning
        category = pickle.dumps(UserWarning)
    return category, str(w.message), str(w.filename), int(w.lineno or 0)


# ---------------------------------------------------------------------- the parent


def _run_isolated(item: pytest.Item) -> list[pytest.TestReport]:
    """Fork, let the child run the test, and return its reports (and a crash's)."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads (pytest-xdist's): the
        # child only runs the test and never touches what those threads hold.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(item, write)
    os.close(write)
    try:
        messages, status = _receive(read, pid)
    except BaseException:  # a timeout or ^C in the parent: the child goes too
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    finally:
        os.close(read)
    if hasattr(item, "_request"):  # as runtestprotocol does once the test is over
        item._request = False
        item.funcargs = None  # type: ignore[attr-defined]
    return _reports(item, messages, status, pid)


def _receive(fd: int, pid: int) -> tuple[list[tuple[Any, ...]], int]:
    """Every message the child sends, and its wait status. A process the test forked in
    turn may hold the pipe open after the child is gone: the child's exit ends it too."""
    buffer = b""
    status: int | None = None
    while True:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            buffer += chunk
            continue
        done, found = os.waitpid(pid, os.WNOHANG)
        if done:
            status = found
            os.set_blocking(fd, False)
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(fd, 1 << 16):
                    buffer += chunk
            break
    if status is None:
        status = os.waitpid(pid, 0)[1]
    messages: list[tuple[Any, ...]] = []
    while len(buffer) >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buffer)
        if len(buffer) < _HEADER.size + size:
            break  # cut short by the crash
        messages.append(pickle.loads(buffer[_HEADER.size : _HEADER.size + size]))
        buffer = buffer[_HEADER.size + size :]
    return messages, status


def _reports(
    item: pytest.Item, messages: Iterable[tuple[Any, ...]], status: int, pid: int
) -> list[pytest.TestReport]:
    config = item.config
    reports: list[pytest.TestReport] = []
    site, done, error = "", False, None
    for message in messages:
        kind = message[0]
        if kind == "report":
            reports.append(
                config.hook.pytest_report_from_serializable(config=config, data=message[1])
            )
        elif kind == "crash":
            site = message[1]
        elif kind == "warning":
            category, text, filename, lineno = message[1:]
            cls = pickle.loads(category)
            warnings.warn_explicit(cls(text), cls, filename, lineno)
        elif kind == "done":
            done = True
        elif kind == "error":
            error = message[1]
            if message[2]:
                pytest.exit(f"{item.nodeid}: {error}")
    if done and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return reports
    from faults.children import remove_leftovers  # noqa: PLC0415

    remove_leftovers(pid)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        why = f"crashed ({name}) at {site}" if site else f"crashed ({name})"
    else:
        why = error or f"the test's process exited with status {os.WEXITSTATUS(status)}"
    return reports + _crash_reports(item, reports, why, site)


def _crash_reports(
    item: pytest.Item, reports: list[pytest.TestReport], why: str, site: str
) -> list[pytest.TestReport]:
    """The failed report of the phase the child died in, and a teardown report that carries
    the test's figures, so that the summary counts and names it."""
    seen = {r.when: r for r in reports}
    when: Phase
    if "setup" not in seen:
        when = "setup"
    elif seen["setup"].passed and "call" not in seen:
        when = "call"
    else:
        when = "teardown"
    settings = item.config.stash[SETTINGS]
    spec = effective_spec(item, settings)
    if spec is not None or (settings.replay is not None and not isinstance(item, ScenarioItem)):
        command = reproduce_command(item, spec if spec is not None else "")
    else:
        command = f"pytest {_quote(_node_argument(item))} --fault-seed {settings.seed}"
    item.user_properties[:] = [(_REPRO, command), (_CRASHED, why)]
    sections = _captured(item, when)
    out: list[pytest.TestReport] = []

    def crashed() -> None:
        pytest.fail(why, pytrace=False)

    report = _report(item, crashed, when)
    report.sections += [*sections, ("resilience: reproduce with", command)]
    out.append(report)
    if when != "teardown":
        state = TestState(item.nodeid)
        state.spec = spec
        if site:
            from pytest_resilience.core.events import FaultInjected  # noqa: PLC0415

            state.journal.append(
                FaultInjected(time=0.0, source="faults", site=site, fault="crash", call=0)
            )
        figures = _figures(state, None)
        figures["under_faults"] = int(spec is not None or bool(site))
        figures["crashed"] = 1
        item.ihook.pytest_resilience_test_figures(item=item, state=state, figures=figures)
        item.user_properties[:] = [(_PROP, json.dumps(figures, sort_keys=True))]
        out.append(_report(item, lambda: None, "teardown"))
    item.user_properties[:] = []
    return out


def _report(item: pytest.Item, run: Callable[[], None], when: Phase) -> pytest.TestReport:
    call = pytest.CallInfo.from_call(run, when=when)
    report: pytest.TestReport = item.ihook.pytest_runtest_makereport(item=item, call=call)
    return report


def _captured(item: pytest.Item, when: Phase) -> list[tuple[str, str]]:
    """What the child wrote to stdout and stderr in the phase it died in: pytest's capture
    files are shared with the child, and nobody read them since."""
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is None or not capman.is_globally_capturing():
        return []
    out, err = capman.read_global_capture()
    return [
        (f"Captured {name} {when}", text)
        for name, text in (("stdout", out), ("stderr", err))
        if text
    ]
