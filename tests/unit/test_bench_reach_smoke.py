"""The reach benchmark's harness works: every client family is driven through every
condition against its local server, and a hook that was never reached fails the run.

Two rounds of a few requests: the figures themselves come from ``make bench``, never from
a test.
"""

from __future__ import annotations

from tests.bench import reach


def test_every_family_and_condition_is_measured_and_tabulated() -> None:
    report = reach.measure(rounds=2, target_ms=1.0, events=5)
    for family in reach.FAMILIES:
        for answer in reach.ANSWERS:
            conditions = report.samples[family, answer]
            assert set(conditions) == set(reach.conditions_for(answer))
            assert all(len(samples) == 2 for samples in conditions.values())
    text = reach.format_report(report)
    assert all(family in text for family in reach.FAMILIES)
