"""The verdicts (faults.verdicts): for each, a journal built by hand that breaks it and one
that keeps it, with the account checked word for word; and assert_resilient, which fails
with the broken verdicts and the timeline."""

from __future__ import annotations

import pytest

import faults
from faults.verdicts import (
    HOT_LOOP_RETRIES,
    MAX_RETRIES,
    VERDICTS,
    Broken,
    check_ids,
    format_broken,
    installed_specs,
    judge,
)
from pytest_resilience.core.events import (
    AppRetry,
    AttemptFailed,
    Event,
    FallbackUsed,
    FaultInjected,
    RetryScheduled,
    StreamCancelled,
)
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.leaks import Leak
from pytest_resilience.plugin.assertions import assert_resilient

SITE = "py:app:_request"
ASK = "app.ask"


def journal_of(*events: Event) -> Journal:
    journal = Journal()
    for event in events:
        journal.append(event)
    return journal


def fault(fault: str = "raise(ConnectionError)", call: int = 1, site: str = SITE) -> FaultInjected:
    return FaultInjected(time=0.0, source="faults", site=site, fault=fault, call=call)


def retry(
    attempt: int,
    delay: float,
    *,
    error: str = "ConnectionError: refused",
    category: str = "connection",
    source: str = ASK,
    library: str = "tenacity",
) -> AppRetry:
    return AppRetry(
        time=0.0,
        source=source,
        library=library,
        attempt=attempt,
        delay=delay,
        error=error,
        category=category,
    )


def faulted_retries(n: int, delay: float, spec_fault: str = "raise(ConnectionError)") -> Journal:
    """One call of app.ask retried ``n`` times, each after a fault at the site."""
    events: list[Event] = []
    for attempt in range(1, n + 1):
        events += [fault(spec_fault, attempt), retry(attempt, delay)]
    return journal_of(*events)


def only(broken: list[Broken]) -> str:
    [one] = broken
    return str(one)


# ----------------------------------------------------------------------- retry-after

STATUS = "status(503,retry_after=20s)"


def test_a_retry_sooner_than_retry_after_breaks_it() -> None:
    journal = journal_of(
        fault(STATUS, 1, "daemon.request"),
        retry(1, 1.0, error="HTTPStatusError: 503", category="transient"),
        fault(STATUS, 2, "daemon.request"),
        retry(2, 2.0, error="HTTPStatusError: 503", category="transient"),
    )
    assert only(judge(journal)) == (
        "retry-after: app.ask (tenacity) retried 2 times sooner than Retry-After: waited "
        "1 s, 2 s after daemon.request=status(503,retry_after=20s) (calls 1-2), which asked "
        "for 20 s"
    )


def test_the_cores_retry_counts_with_the_error_of_its_failed_attempt() -> None:
    journal = journal_of(
        fault("ratelimit(retry_after=5s)", 1, "daemon.request"),
        AttemptFailed(
            time=0.0, source="ask", attempt=1, error="RateLimited: 429", category="rate_limited"
        ),
        RetryScheduled(time=0.0, source="ask", attempt=2, delay=0.5),
    )
    assert only(judge(journal)) == (
        "retry-after: ask (pytest_resilience) retried once sooner than Retry-After: waited "
        "0.5 s after daemon.request=ratelimit(retry_after=5s) (call 1), which asked for 5 s"
    )


def test_waiting_the_retry_after_or_a_fault_without_one_keeps_it() -> None:
    assert judge(journal_of(fault(STATUS, 1, "daemon.request"), retry(1, 20.0))) == []
    assert judge(journal_of(fault(STATUS, 1, "daemon.request"), retry(1, 45.0))) == []
    assert judge(journal_of(fault("ratelimit", 1, "daemon.request"), retry(1, 1.0))) == []
    assert judge(journal_of(fault("status(500)", 1, "daemon.request"), retry(1, 1.0))) == []


# --------------------------------------------------------------------------- backoff


def test_retries_in_a_row_without_waiting_after_one_fault_break_it() -> None:
    assert only(judge(faulted_retries(4, 0.0))) == (
        "backoff: app.ask (tenacity) retried 4 times in a row without backing off (waited "
        "0 s, 0 s, 0 s, 0 s) after py:app:_request=raise(ConnectionError) (calls 1-4)"
    )
    # under the floor is no wait either
    assert [b.verdict for b in judge(faulted_retries(HOT_LOOP_RETRIES, 0.001))] == ["backoff"]


def test_waiting_or_few_immediate_retries_or_separate_calls_keep_it() -> None:
    assert judge(faulted_retries(4, 0.5)) == []
    assert judge(faulted_retries(HOT_LOOP_RETRIES - 1, 0.0)) == []
    # three calls, each retried once at once: no loop
    calls = [e for _ in range(3) for e in (fault(), retry(1, 0.0))]
    assert judge(journal_of(*calls)) == []
    # immediate retries after different faults are no loop on one fault
    mixed = [
        fault(f"raise({name})", n)
        for n, name in enumerate(("ConnectionError", "TimeoutError", "OSError"), 1)
    ]
    assert judge(journal_of(*(e for n, f in enumerate(mixed, 1) for e in (f, retry(n, 0))))) == []


def test_retries_with_no_fault_before_them_are_not_judged() -> None:
    journal = journal_of(*(retry(n, 0.0) for n in range(1, 6)), fault())
    assert judge(journal) == []
    assert judge(journal_of(*(retry(n, 0.0) for n in range(1, 6)))) == []


# --------------------------------------------------------------------------- bounded

ALWAYS = faults.parse(f"{SITE}=raise(ConnectionError)")


def test_retries_past_the_bound_under_an_always_on_fault_break_it() -> None:
    journal = faulted_retries(MAX_RETRIES + 2, 1.0)
    assert only(judge(journal, specs=ALWAYS)) == (
        "bounded: app.ask (tenacity) retried one call 12 times under "
        "py:app:_request=raise(ConnectionError), which fires on every call: nothing stopped "
        "it within 10 retries"
    )
    from_the_third_call = faults.parse(f"{SITE}=@3+raise(ConnectionError)")
    assert [b.verdict for b in judge(journal, specs=[from_the_third_call])] == ["bounded"]


def test_a_bounded_call_a_limited_fault_or_no_spec_keep_it() -> None:
    assert judge(faulted_retries(MAX_RETRIES, 1.0), specs=ALWAYS) == []
    journal = faulted_retries(MAX_RETRIES + 2, 1.0)
    for limited in (
        "20*raise(ConnectionError)",
        "50%raise(ConnectionError)",
        "@2raise(ConnectionError)",
    ):
        assert judge(journal, specs=faults.parse(f"{SITE}={limited}")) == [], limited
    assert judge(journal) == []  # which faults fire on every call: only a spec says


# ------------------------------------------------------------------------- permanent


def test_retrying_an_error_that_cannot_succeed_breaks_it() -> None:
    journal = journal_of(
        fault('raise(ValueError,"bad prompt")'),
        retry(1, 1.0, error="ValueError: bad prompt", category="permanent"),
    )
    assert only(judge(journal)) == (
        "permanent: app.ask (tenacity) retried once an error that cannot succeed: "
        'ValueError: bad prompt (category permanent) after py:app:_request=raise(ValueError,"bad '
        'prompt") (call 1)'
    )


def test_retrying_a_transient_error_or_a_result_keeps_it() -> None:
    assert judge(faulted_retries(2, 1.0)) == []
    journal = journal_of(fault("none"), retry(1, 1.0, error="result: None", category="result"))
    assert judge(journal) == []


# ------------------------------------------------------------------------ cut-stream

CUT = fault("truncate(after=3)", 1, "daemon.stream")


def test_a_cut_stream_nobody_noticed_in_a_passing_test_breaks_it() -> None:
    assert only(judge(journal_of(CUT))) == (
        "cut-stream: daemon.stream=truncate(after=3) (call 1) cut the stream, and the test "
        "passed with no retry, fallback, stall or error recorded after it: the cut answer was "
        "taken as complete"
    )
    for cut in ("lost(after=2)", "corrupt", 'raise(ConnectionResetError,"reset")'):
        assert [b.verdict for b in judge(journal_of(fault(cut, 1, "llama.stream")))] == [
            "cut-stream"
        ], cut
    assert [b.verdict for b in judge(journal_of(fault("truncate(after=1)")))] == ["cut-stream"]
    # a consumer that merely stopped reading noticed nothing
    closed = StreamCancelled(time=0.0, source="guard", reason="closed", partial="Once")
    assert [b.verdict for b in judge(journal_of(CUT, closed))] == ["cut-stream"]


def test_a_reaction_after_the_cut_a_failed_test_or_a_cut_asked_for_keep_it() -> None:
    fell_back = FallbackUsed(time=0.0, source="app", step="canned", index=1)
    errored = StreamCancelled(time=0.0, source="guard", reason="error: X: y", partial="")
    for reaction in (retry(1, 1.0), fell_back, errored):
        assert judge(journal_of(CUT, reaction)) == [], reaction
    assert judge(journal_of(CUT), passed=False) == []
    assert judge(journal_of(CUT), asked={"daemon.stream"}) == []
    # a stall is no cut; raise at a site that is not a stream is none either
    assert judge(journal_of(fault("stall(after=2,for=5s)", 1, "daemon.stream"))) == []
    assert judge(journal_of(fault("raise(ConnectionError)"))) == []


def test_a_reaction_counts_for_the_cuts_before_it_at_that_site_only() -> None:
    second = fault("truncate(after=3)", 2, "daemon.stream")
    broken = judge(journal_of(CUT, second, retry(1, 1.0)))
    assert [b.events for b in broken] == [(CUT,)]  # the retry came after the second cut


# ---------------------------------------------------------------------------- closed

STREAM = Leak("stream", "<DaemonStream open>", "test_x.py:3 in test_x")


def test_a_stream_left_open_after_a_fault_breaks_it() -> None:
    journal = journal_of(fault(), fault("lost(after=3)", 1, "daemon.stream"), fault(call=2))
    assert only(judge(journal, open_resources=[STREAM], ignore=["cut-stream"])) == (
        "closed: stream: <DaemonStream open> (created at test_x.py:3 in test_x) was still "
        "open when the test ended, after daemon.stream=lost(after=3) (call 1) and 2 more faults"
    )
    response = Leak("Response", "<Response [200 OK]>")
    assert [b.verdict for b in judge(journal_of(fault()), open_resources=[response])] == ["closed"]


def test_other_resources_or_no_fault_keep_it() -> None:
    thread = Leak("thread", "'poller' running Poller.run")
    assert judge(journal_of(fault()), open_resources=[thread, Leak("backend", "<tiny>")]) == []
    assert judge(journal_of(), open_resources=[STREAM]) == []


# ------------------------------------------------------------------------- the rest


def test_ignore_leaves_verdicts_out_and_refuses_unknown_ones() -> None:
    journal = faulted_retries(4, 0.0)
    assert judge(journal, ignore=("backoff",)) == []
    with pytest.raises(ValueError, match=r"unknown verdict 'hot-loop'; known: retry-after, "):
        judge(journal, ignore=["hot-loop"])
    assert check_ids("closed") == ("closed",)
    assert list(VERDICTS) == [
        "retry-after",
        "backoff",
        "bounded",
        "permanent",
        "cut-stream",
        "closed",
        "no-repeat",
        "stream-closed",
    ]


def test_format_broken_names_each_claim() -> None:
    text = format_broken(judge(faulted_retries(3, 0.0)))
    assert text.startswith("  backoff (backed off instead of retrying in a hot loop): app.ask")


def test_assert_resilient_lists_the_broken_verdicts_then_the_timeline() -> None:
    journal = faulted_retries(3, 0.0)
    with pytest.raises(AssertionError) as caught:
        assert_resilient(journal)
    message = str(caught.value)
    assert message.startswith(
        "the app broke 1 verdict under faults:\n  backoff (backed off instead of retrying in "
        "a hot loop): app.ask (tenacity) retried 3 times in a row without backing off"
    )
    assert "\ntimeline:\n" in message
    assert "app.retry [app.ask] library='tenacity' attempt=3 delay=0.0" in message
    assert_resilient(journal, ignore=("backoff",))
    assert_resilient(faulted_retries(3, 1.0))
    assert_resilient(journal_of())


def test_assert_resilient_judges_leaks_given() -> None:
    journal = journal_of(fault("lost(after=3)", 1, "daemon.stream"))
    assert_resilient(journal, ignore=("cut-stream",))
    with pytest.raises(AssertionError, match=r"closed \(closed the stream or response"):
        assert_resilient(journal, ignore=("cut-stream",), leaks=[STREAM])

    class Checker:
        def leaks(self) -> list[Leak]:
            return [STREAM]

    with pytest.raises(AssertionError, match="1 verdict"):
        assert_resilient(journal, ignore=("cut-stream",), leaks=Checker())


def test_assert_resilient_reads_the_specs_of_the_injections_installed_on_the_journal() -> None:
    site = "py:tests.unit.fault_targets:answer"
    journal = Journal()
    with faults.inject(f"{site}=raise(ConnectionError)", journal=journal):
        assert [str(s) for s in installed_specs(journal)] == [f"{site}=raise(ConnectionError)"]
        assert installed_specs(Journal()) == []
        for attempt in range(1, MAX_RETRIES + 3):
            journal.append(fault(call=attempt, site=site))
            journal.append(retry(attempt, 1.0))
        with pytest.raises(AssertionError, match=r"bounded \(.*\): app\.ask .* 12 times"):
            assert_resilient(journal)
    assert installed_specs(journal) == []
    assert_resilient(journal)  # the spec is gone: which faults fired on every call is unknown
    with pytest.raises(AssertionError, match="bounded"):
        assert_resilient(journal, spec=faults.parse(f"{site}=raise(ConnectionError)"))
