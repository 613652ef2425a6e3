"""The core benchmark's harness works: every subject is checked, timed and tabulated.

Only a handful of calls per subject: speed goals are measured by ``make bench``, never
asserted here.
"""

from __future__ import annotations

import asyncio

import pytest
import stamina

from tests.bench import core as bench


def _nothing() -> None:
    pass


@pytest.fixture(scope="module")
def report() -> bench.Report:
    return bench.measure(rounds=2, iterations=5)


def test_every_subject_of_every_row_is_timed_against_its_baseline(report: bench.Report) -> None:
    assert report.rounds == 2
    assert {row.key for row in report.rows} >= {"retry", "breaker", "flaky", "open", "aretry"}
    for row in report.rows:
        assert row.subjects, row.key
        for subject in row.subjects:
            m = report.get(row, subject.library)
            assert m is not None
            assert m.n == 5
            assert len(m.samples) == 2
            assert all(s > 0 for s in m.samples)
            ratio = report.ratio(row, subject.library)
            assert ratio is not None
            assert ratio > 0
        assert report.base(row) is (report.bare_await if row.is_async else report.bare_call)


def test_the_peers_named_in_the_goals_are_all_compared(report: bench.Report) -> None:
    libraries = {s.library for row in report.rows for s in row.subjects}
    assert libraries >= {"ours", "tenacity", "stamina", "backoff", "pybreaker", "circuitbreaker"}
    open_row = next(r for r in report.rows if r.key == "open")
    assert {s.library for s in open_row.subjects} >= {"ours", "pybreaker", "circuitbreaker"}


def test_the_table_shows_each_row_with_its_goal_and_verdict(report: bench.Report) -> None:
    text = bench.format_report(report)
    for row in report.rows:
        assert row.title in text
        if row.goal is not None:
            assert f"≤{row.goal:g}×" in text
    for peer in bench.LIBRARIES:
        assert peer in text
    for row in report.rows:
        line = next(x for x in text.splitlines() if x.startswith(row.title + " "))
        verdict = report.passed(row)
        expected = {True: "pass", False: "MISS", None: "info" if row.goal is None else "n/a"}
        assert expected[verdict] in line.split(), line


def test_passed_compares_the_median_ratio_with_the_goal() -> None:
    row = bench.Row("r", "r", "success", False, 10.0, ())
    base = bench.Measurement("base", "call", _nothing, False, samples=[10.0, 10.0, 20.0])
    ours = bench.Measurement("r", "ours", _nothing, False, samples=[90.0, 120.0, 200.0])
    measurements = {("base", "call"): base, ("r", "ours"): ours}
    measurements["base", "await"] = base
    report = bench.Report([row], measurements, 3, 0.0)
    assert report.ratio(row, "ours") == 10.0  # per-round ratios 9, 12, 10
    assert report.min_ratio(row, "ours") == 9.0
    assert report.passed(row) is True
    ours.samples[2] = 220.0  # ratios 9, 12, 11: median 11
    assert report.passed(row) is False
    assert report.ratio(row, "tenacity") is None


def test_check_rejects_a_subject_that_skips_the_work() -> None:
    loop = asyncio.new_event_loop()
    try:
        success = bench.Row("s", "s", "success", False, None, ())
        with pytest.raises(AssertionError, match="ran 0 times"):
            bench.check(success, bench.Subject("lazy", lambda fn: lambda: 1), loop)
        flaky = bench.Row("f", "f", "flaky", False, None, ())
        with pytest.raises(AssertionError, match="3rd attempt"):
            bench.check(flaky, bench.Subject("no-retry", lambda fn: lambda: 0), loop)
        rejected = bench.Row("o", "o", "rejected", False, None, ())
        with pytest.raises(AssertionError, match="admitted"):
            bench.check(rejected, bench.Subject("closed", lambda fn: fn, ValueError), loop)
    finally:
        loop.close()


def test_main_prints_the_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--rounds", "1", "--iterations", "3"]) == 0
    out = capsys.readouterr().out
    assert "bare call" in out
    assert "Nanoseconds per call" in out


def test_stamina_hooks_are_restored_after_a_run() -> None:
    before = stamina.instrumentation.get_on_retry_hooks()
    with bench.quiet_peers():
        assert stamina.instrumentation.get_on_retry_hooks() == ()
    assert stamina.instrumentation.get_on_retry_hooks() == before
