"""The splice decision of a resilient stream, on its own: told what happened, what it answers.

No backend, no guard, no clock: each test tells a :class:`Splice` what happened (the breaker
admitted or refused the daemon, a chunk arrived, the source ended or failed, the consumer
got a chunk or closed the stream) and checks its answers and the state it shows. The
streams that act on these answers are tested in ``test_resilient_unit.py`` (sync) and
``test_resilient_async.py`` (async).
"""

from __future__ import annotations

import pytest

from pytest_resilience.backends.resilient.splice import (
    Deliver,
    Finish,
    GiveUp,
    Pull,
    Splice,
    Stop,
    Switch,
)
from pytest_resilience.core.errors import (
    CircuitOpenError,
    DaemonLost,
    DaemonUnavailable,
    FallbackError,
    ModelNotFound,
    StreamInterrupted,
    StreamStalled,
)
from pytest_resilience.core.stream import StreamResult

PROMPT = "deterministic"
ANSWER = "abcdefghijklmnop"


def complete(text: str = ANSWER) -> StreamResult:
    return StreamResult(text=text, complete=True, reason="complete")


def delivered(splice: Splice, *chunks: str) -> None:
    """The daemon's chunks, each delivered as the splice answers."""
    for chunk in chunks:
        step = splice.on_chunk(chunk)
        assert isinstance(step, Deliver)
        splice.on_delivered(step.text)


def switched_after(splice: Splice, *chunks: str) -> Switch:
    """The daemon delivers ``chunks``, then its connection is lost."""
    splice.on_admitted()
    delivered(splice, *chunks)
    step = splice.on_error(DaemonLost("connection reset"), cancelled=False)
    assert isinstance(step, Switch)
    return step


# ---------------------------------------------------------------------------- the daemon


def test_the_daemons_chunks_are_delivered_and_only_the_first_settles_the_permit() -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    splice.on_admitted()
    assert splice.on_chunk("abc") == Deliver("abc", answered=True)
    splice.on_delivered("abc")
    assert splice.on_chunk("def") == Deliver("def", answered=False)
    splice.on_delivered("def")
    assert splice.on_chunk("") == Deliver("", answered=False)  # delivered as it came
    assert splice.on_end(complete("abcdef")) == Finish(answered=False)
    assert (splice.source, splice.fell_back, splice.complete, splice.ended) == (
        "daemon",
        False,
        True,
        True,
    )
    assert splice.text == "abcdef"
    assert splice.error is None


def test_an_empty_answer_from_the_daemon_settles_the_permit_at_its_end() -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    splice.on_admitted()
    assert splice.on_end(complete("")) == Finish(answered=True)
    assert splice.complete


def test_a_chunk_is_only_delivered_when_the_consumer_takes_it() -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    splice.on_admitted()
    splice.on_chunk("abc")  # read ahead, not handed over yet
    assert splice.text == ""
    splice.on_delivered("abc")
    assert splice.text == "abc"


# ----------------------------------------------------------------------------- switching


def test_a_refused_daemon_switches_at_once_with_nothing_to_count() -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    refused = CircuitOpenError("resilient.daemon", "open", 10.0)
    assert splice.on_refused(refused) == Switch(refused, None, PROMPT, 0)
    assert (splice.source, splice.fell_back, splice.daemon_error) == ("direct", True, refused)


def test_a_daemon_failing_before_its_first_chunk_settles_the_permit() -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    splice.on_admitted()
    down = DaemonUnavailable("connection refused")
    assert splice.on_error(down, cancelled=False) == Switch(down, "settle", PROMPT, 0)


def test_a_daemon_failing_after_its_first_chunk_is_counted_late() -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    step = switched_after(splice, "abc", "def")
    assert (step.breaker, step.prompt, step.offset) == ("late", PROMPT, 6)
    assert isinstance(step.error, DaemonLost)
    assert splice.daemon_error is step.error


@pytest.mark.parametrize(("chunks", "breaker"), [((), "settle"), (("abc",), "late")])
def test_a_stall_that_ends_the_daemons_stream_normally_is_still_a_failure(
    chunks: tuple[str, ...], breaker: str
) -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    splice.on_admitted()
    delivered(splice, *chunks)
    stalled = StreamResult(text="".join(chunks), complete=False, reason="idle")
    step = splice.on_end(stalled)  # a guard with on_stall="return"
    assert isinstance(step, Switch)
    assert step.breaker == breaker
    assert isinstance(step.error, StreamInterrupted)
    assert (step.error.reason, step.error.partial) == ("idle", "".join(chunks))
    assert step.offset == len("".join(chunks))


# ------------------------------------------------------------------------------- replay


def test_the_replay_skips_what_was_delivered_even_inside_a_chunk() -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    switched_after(splice, "abc", "def")  # 6 characters delivered
    assert splice.on_chunk("abcd") == Pull()  # all of it replayed
    assert splice.on_chunk("efgh") == Deliver("gh")  # the prefix ends inside it
    splice.on_delivered("gh")
    assert splice.on_chunk("ijkl") == Deliver("ijkl")
    splice.on_delivered("ijkl")
    assert splice.on_chunk("") == Pull()  # in process, an empty chunk is not delivered
    assert splice.on_end(complete()) == Finish(answered=False)
    assert splice.text == "abcdefghijkl"
    assert (splice.source, splice.fell_back, splice.complete) == ("direct", True, True)


def test_a_replay_after_a_refusal_delivers_everything() -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    splice.on_refused(CircuitOpenError("resilient.daemon", "open", 10.0))
    assert splice.on_chunk("abcd") == Deliver("abcd")
    assert splice.on_end(None) == Finish()


@pytest.mark.parametrize("policy", ["raise", "never_fail"])
def test_a_replay_that_contradicts_the_delivered_text_gives_up(policy: str) -> None:
    splice = Splice(PROMPT, policy, "resilient")  # type: ignore[arg-type]
    switched_after(splice, "abc", "def")
    step = splice.on_chunk("ABCD")
    assert isinstance(step, GiveUp)
    assert isinstance(step.error, StreamInterrupted)
    assert (step.error.reason, step.error.partial) == ("fallback diverged", "abcdef")
    assert step.cause is step.error
    assert step.diverged == "abcdef"  # journaled as StreamCancelled before the source closes
    assert step.exhausted == ()
    assert step.raises is (policy == "raise")
    assert splice.ended
    assert not splice.complete
    assert splice.error is None  # kept once the source is closed
    splice.on_given_up(step)
    assert splice.error is step.error


def test_a_replay_that_ends_before_reproducing_the_delivered_text_gives_up() -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    switched_after(splice, "abc", "def")
    assert splice.on_chunk("abcd") == Pull()
    step = splice.on_end(complete("abcd"))
    assert isinstance(step, GiveUp)
    assert step.diverged == "abcdef"
    assert not splice.complete


# ---------------------------------------------------------------------------- giving up


@pytest.mark.parametrize("policy", ["raise", "never_fail"])
def test_the_direct_backend_failing_too_wraps_both_errors(policy: str) -> None:
    splice = Splice(PROMPT, policy, "resilient")  # type: ignore[arg-type]
    switch = switched_after(splice, "abc")
    missing = ModelNotFound("missing.gguf")
    step = splice.on_error(missing, cancelled=False)
    assert isinstance(step, GiveUp)
    assert isinstance(step.error, FallbackError)
    assert step.error.chain == "resilient"
    assert step.error.failures == (("daemon", switch.error), ("direct", missing))
    assert step.cause is missing  # raised from it
    assert step.exhausted == (
        "daemon: DaemonLost: connection reset",
        "direct: ModelNotFound: model not found or invalid: missing.gguf",
    )
    assert step.diverged is None
    assert step.raises is (policy == "raise")
    splice.on_given_up(step)
    assert splice.error is step.error


def test_an_in_process_stall_is_both_sides_failing() -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    switched_after(splice)
    stalled = StreamStalled("idle", 5.0)
    step = splice.on_error(stalled, cancelled=False)
    assert isinstance(step, GiveUp)
    assert isinstance(step.error, FallbackError)
    assert step.error.failures[1] == ("direct", stalled)


def test_an_interrupted_in_process_stream_is_not_wrapped() -> None:
    splice = Splice(PROMPT, "never_fail", "resilient")
    switched_after(splice, "abc")
    interrupted = StreamInterrupted("closed", "abc")
    step = splice.on_error(interrupted, cancelled=False)
    assert step == GiveUp(interrupted, interrupted, raises=False)


@pytest.mark.parametrize("source", ["daemon", "direct"])
def test_a_callers_error_ends_the_stream_and_is_raised_even_under_never_fail(
    source: str,
) -> None:
    splice = Splice(PROMPT, "never_fail", "resilient")
    if source == "direct":
        switched_after(splice, "abc")
    else:
        splice.on_admitted()
    bug = TypeError("a caller's bug")
    step = splice.on_error(bug, cancelled=False)
    assert step == GiveUp(bug, bug, raises=True)
    splice.on_given_up(step)
    assert (splice.source, splice.ended, splice.error) == (source, True, bug)


# ------------------------------------------------------------------------------ stopping


@pytest.mark.parametrize("source", ["daemon", "direct"])
def test_a_cancelled_stream_is_stopped_never_switched(source: str) -> None:
    splice = Splice(PROMPT, "never_fail", "resilient")
    splice.on_admitted()
    if source == "direct":
        switched_after(splice)
    # the guard's own cancel(): it ends the stream with StreamInterrupted
    assert splice.on_error(StreamInterrupted("cancelled"), cancelled=True) == Stop()
    assert splice.source == source
    assert splice.error is None


def test_closing_ends_the_stream_and_gives_the_permit_back_uncounted() -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    splice.on_admitted()
    splice.on_closed()
    assert splice.ended
    assert not splice.complete
    assert splice.error is None
    # a chunk that was already on its way no longer settles a permit
    assert splice.on_chunk("abc") == Deliver("abc", answered=False)


def test_the_repr_shows_the_source_the_state_and_the_delivered_length() -> None:
    splice = Splice(PROMPT, "raise", "resilient")
    assert repr(splice) == "<Splice daemon open chars=0>"
    switched_after(splice, "abc")
    assert repr(splice) == "<Splice direct open chars=3>"
    splice.on_closed()
    assert repr(splice) == "<Splice direct ended chars=3>"
