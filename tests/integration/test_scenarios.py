"""The shipped scenarios run and hold, against the tiny model and a real daemon; a wrong
expectation fails readably; rollbacks run when a step raises."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import psutil  # type: ignore[import-untyped]
import pytest

from faults.scenario import (
    ScenarioOp,
    format_failure,
    format_report,
    load,
    main,
    replay_command,
    run,
)
from pytest_resilience.backends.resilient import ResilientClient
from pytest_resilience.core.events import CheckpointSaved, FaultInjected, Recovered
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Iterator

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

SCENARIOS = Path(__file__).parents[2] / "scenarios"
SHIPPED = sorted(SCENARIOS.glob("*.toml"))
GENERATE = vars(ResilientClient)["generate"]


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    before = _children()
    yield
    stray = _children() - before
    for pid in stray:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            continue
    assert not stray, f"child processes left behind: {sorted(stray)}"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_scenario_really_fails_and_holds(path: Path) -> None:
    scenario = load(path)
    outcome = run(scenario)
    assert outcome.passed, format_failure(outcome)
    assert outcome.failures == []
    assert outcome.error is None
    # Every expectation written in the file was checked, and the faults really fired
    checked = {c.key.split(".")[0] for c in outcome.checks if not c.label}
    assert checked == set(scenario.expect)
    assert outcome.journal.events(FaultInjected)
    assert outcome.stats.total >= 1


COIN = """\
version = 1
title = "half the completions answer None, as the seed draws them"
seed = 1

[target]
client = "llama"
max_tokens = 4

[faults]
spec = "llama.generate=50%none"

[[steps]]
op = "generate"
repeat = 16
"""


def test_the_same_seed_gives_the_same_faults_at_the_same_calls(tmp_path: Path) -> None:
    # a probabilistic spec: which calls fail is the seed's draw (a counted one, 2*none,
    # fails the same calls whatever the seed, and could not tell)
    path = tmp_path / "coin.toml"
    path.write_text(COIN)
    scenario = load(path)

    def fired(seed: int | None) -> list[int]:
        outcome = run(scenario, seed=seed)
        return [e.call for e in outcome.journal.events(FaultInjected)]

    assert fired(5) == fired(5)
    assert fired(None) == fired(1)  # without a seed given, the file's own
    assert 0 < len(fired(1)) < 16
    # and the seed decides: other seeds draw other calls (16 coins: all alike is 2**-32)
    assert len({tuple(fired(seed)) for seed in (1, 2, 3)}) > 1


def test_a_wrong_expectation_fails_with_the_timeline_and_the_replay_command(
    tmp_path: Path,
) -> None:
    text = (SCENARIOS / "none_retried.toml").read_text()
    assert "retries = 2" in text
    path = tmp_path / "wrong.toml"
    path.write_text(text.replace("retries = 2", "retries = 5"))
    scenario = load(path)
    outcome = run(scenario, seed=77)
    assert not outcome.passed
    assert outcome.failures == ["expect.retries = 5: got 2"]
    report = format_failure(outcome)
    assert "expect.retries = 5: got 2" in report
    assert "fault.injected [faults] site='llama.generate' fault='none' call=1" in report
    assert "retry.scheduled [retry] attempt=2" in report
    assert "scenario.step [scenario] index=1 op='generate'" in report
    assert report.rstrip().endswith(f"replay: {replay_command(scenario, 77)}")
    assert "--fault-seed 77" in report


def test_the_status_is_degraded_while_the_daemon_is_gone_and_healthy_around_it() -> None:
    scenario = load(SCENARIOS / "daemon_lost_cached.toml")
    outcome = run(scenario)
    assert outcome.passed, format_failure(outcome)
    assert outcome.statuses == [
        ("before", "healthy"),
        ("step 2", "degraded"),
        ("step 3", "degraded"),
        ("step 4", "degraded"),
        ("step 11", "healthy"),
        ("after", "healthy"),
    ]
    assert [c.held for c in outcome.checks if c.label] == [True] * 6
    assert (
        "      status: healthy before the steps; degraded after steps 2, 3, 4; healthy after "
        "step 11; healthy after the steps"
    ) in format_report(outcome).splitlines()


def _status_edited(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """daemon_lost_cached.toml with its line ``old`` (the one and only) made ``new``; the
    file and the line's number."""
    lines = (SCENARIOS / "daemon_lost_cached.toml").read_text().splitlines(keepends=True)
    [index] = [i for i, line in enumerate(lines) if line.startswith(old)]
    lines[index] = new + "\n"
    path = tmp_path / "daemon_lost_cached.toml"
    path.write_text("".join(lines))
    return path, index + 1


def test_a_steady_state_whose_status_does_not_hold_injects_no_fault(tmp_path: Path) -> None:
    path, line = _status_edited(tmp_path, 'status = "healthy"        #', 'status = "degraded"')
    outcome = run(load(path))
    assert not outcome.passed
    assert outcome.statuses == [("before", "healthy")]
    op_line = line - 2  # the probe's op = line
    assert outcome.failures[0] == (
        f"steady_state.status before the steps (line {op_line}) = 'degraded': got 'healthy'"
    )
    assert not outcome.journal.events(FaultInjected)  # the steps never ran
    assert not outcome.journal.events(ScenarioOp)[1:]  # the probe's op only


def test_a_step_whose_status_does_not_hold_fails_with_the_reasons(tmp_path: Path) -> None:
    path, _ = _status_edited(
        tmp_path, 'status = "degraded"       # the daemon', 'status = "healthy"'
    )
    outcome = run(load(path))
    assert not outcome.passed
    [failure] = outcome.failures
    assert failure.startswith("steps.status after step 2 (line ")
    assert failure.endswith(
        ") = 'healthy': got 'degraded' (daemon: breaker 'resilient.daemon' is open; "
        "daemon: daemon: down: ping failed; degradation: level: minimal)"
    )
    assert "FAILED: " + failure in format_report(outcome)


def test_rollbacks_run_when_a_step_raises(tmp_path: Path) -> None:
    path = tmp_path / "raises.toml"
    path.write_text(
        """\
version = 1
title = "a step raises a caller's bug"
[target]
client = "resilient"
[faults]
spec = "py:pytest_resilience.backends.resilient:ResilientClient.generate=@2raise(TypeError)"
[steady_state]
op = "generate"
prompt = "Hello"
[[steps]]
op = "generate"
repeat = 3
[[steps]]
op = "kill_daemon"
[expect]
success_rate = 1.0
leaks = "none"
"""
    )
    journal = Journal()
    outcome = run(load(path), journal=journal)
    assert not outcome.passed
    assert outcome.error is not None
    assert outcome.error.startswith("step 1 (generate, line 11) raised TypeError")
    assert outcome.failures[0] == outcome.error
    # the rollbacks ran: faults uninstalled, daemon stopped (the autouse check), no leaks
    assert vars(ResilientClient)["generate"] is GENERATE
    assert {c.key: c.held for c in outcome.checks}["leaks"]
    ops = [e.outcome for e in journal.events(ScenarioOp)]
    assert ops == ["ok", "ok"]  # the probe and the first call; the second raised
    assert outcome.stats.ops == {"generate": [1, 0]}


def test_the_cli_reports_each_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("none_retried.toml", "stream_stall.toml"):
        (tmp_path / name).write_text((SCENARIOS / name).read_text())
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PASS  none_retried.toml: two None answers are retried" in out
    assert "injected: llama.generate none at calls 1, 2" in out
    assert "reaction: 2 retries" in out
    assert "injected: llama.stream stall(after=5) at call 1" in out
    assert "2 of 2 scenarios held" in out
    assert out.startswith("Replaying 2 scenario files. Each builds the code under test")
    assert f"The same as a pytest test: pytest {tmp_path / 'none_retried.toml'}" in out

    (tmp_path / "none_retried.toml").write_text(
        (SCENARIOS / "none_retried.toml").read_text().replace("retries = 2", "retries = 1")
    )
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  none_retried.toml" in out
    assert "replay: pytest" in out
    assert "1 of 2 scenarios held" in out


def test_a_killed_job_is_a_real_process_and_resumes_where_it_died() -> None:
    outcome = run(load(SCENARIOS / "checkpoint_resume.toml"))
    assert outcome.passed, format_failure(outcome)
    killed = outcome.journal.events(FaultInjected)
    assert [(e.site, e.fault) for e in killed] == [("job.process", "lost(after=2)")]
    # the child saved parts 1 and 2 (perhaps 3, if the kill landed after its write): the
    # resumed run in process saved only what came after, up to the last of 5 parts
    saved = [e.step for e in outcome.journal.events(CheckpointSaved)]
    assert saved[-1] == 5
    assert saved[0] in (3, 4)
    assert saved == list(range(saved[0], 6))
    assert [e.how for e in outcome.journal.events(Recovered)] == ["checkpoint"]


def test_a_job_whose_child_dies_early_fails_the_step_with_its_error(tmp_path: Path) -> None:
    text = (SCENARIOS / "checkpoint_resume.toml").read_text()
    (tmp_path / "broken.gguf").write_bytes(b"not a model")
    path = tmp_path / "killed.toml"
    path.write_text(text.replace('model = "tiny"', 'model = "broken.gguf"'))
    outcome = run(load(path))
    assert not outcome.passed
    assert outcome.error is None  # a failed model op, not a crash of the scenario
    failed = [e.detail for e in outcome.journal.events(ScenarioOp) if e.outcome == "failed"]
    assert len(failed) == 1
    assert failed[0].startswith("BackendError: the job's child process ended after 0 of 2")


def test_the_wire_route_puts_the_proxy_in_front_of_the_scenarios_daemon(tmp_path: Path) -> None:
    # raise() cannot happen on a socket: only the wire route refuses it, which proves the
    # faults went to the proxy and not to the in-process hooks
    text = (SCENARIOS / "rate_limited_on_the_wire.toml").read_text()
    path = tmp_path / "wire.toml"
    path.write_text(text.replace("2*ratelimit(retry_after=5s)", "1*raise(ConnectionError)"))
    outcome = run(load(path))
    assert outcome.error is not None
    assert "raise needs the hooks route" in outcome.error
    hooks = tmp_path / "hooks.toml"
    hooks.write_text(path.read_text().replace('route = "wire"', 'route = "hooks"'))
    assert run(load(hooks)).error is None
