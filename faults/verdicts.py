"""Verdicts: how the application behaved under the faults, read from its journal with no
assertion written for it.

A test under faults that passes proves that the app survived them, not that it behaved
well: it may have retried in a hot loop, ignored the server's Retry-After, retried an
error that can never succeed, or taken a cut stream for a whole answer. :func:`judge`
reads a journal (the faults injected, and the app's reactions: the core's retries and
the app's own, fallbacks, stream events) and returns each :class:`Broken` verdict with a
one-line account of its evidence: which fault, which retry, which delay::

    for broken in judge(journal, specs=[injector.spec]):
        print(broken)      # backoff: app.ask (tenacity) retried 4 times in a row ...

======================  ==============================================================
verdict                 the app ...
======================  ==============================================================
``retry-after``         honoured Retry-After: a retry after a ``ratelimit`` or
                        ``status`` fault that carried ``retry_after=d`` waited ``d`` or
                        more
``backoff``             backed off instead of retrying in a hot loop: never
                        :data:`HOT_LOOP_RETRIES` or more retries in a row of one call,
                        after the same fault, each waiting less than
                        :data:`HOT_LOOP_FLOOR`
``bounded``             stopped after a bounded number of attempts: under a fault that
                        fires on every call (no ``count*``, no ``pct%``), no call was
                        retried more than :data:`MAX_RETRIES` times
``permanent``           did not retry an error that cannot succeed: no retry of an
                        error that ``classify()`` puts in the ``permanent`` category (a
                        4xx answer, a bad request, invalid input, a missing model)
``cut-stream``          did not accept a cut stream as complete: see below
``closed``              closed the stream or response it abandoned: none was left open
                        when the test ended
``no-repeat``           did not deliver again what a broken stream had delivered: no
                        answer given as ``answers`` holds that text twice in a row
``stream-closed``       closed the llama stream it stopped reading: none of
                        ``open_streams`` (:func:`faults.model_use.open_streams`) was
                        left neither exhausted nor closed
======================  ==============================================================

Only what follows a fault is judged: a journal without a ``FaultInjected`` event breaks
no verdict. Each retry is put down to the last fault injected before it (in journal
order); a "call" of the app's is a run of retries of one callable (its ``source``, by
one library) whose attempt numbers go up. The core's retries (``RetryScheduled``) count
as library ``"pytest_resilience"``, with the error and category of the ``AttemptFailed``
before them.

What counts for ``cut-stream``, exactly. A cut is a ``truncate`` at any site (the stream
ends cleanly, early), or a ``lost``, ``raise`` or ``corrupt`` at ``llama.stream`` or
``daemon.stream`` (the stream breaks off, or its chunks are emptied or unreadable). The
verdict is broken when the test passed and, after the cut and before the next fault at
the same site (or the end of the journal), the journal records no event of these kinds: a
retry (``app.retry``, ``retry.scheduled``), a failed attempt or a give-up
(``attempt.failed``, ``retry.gave_up``), a fallback (``fallback.used``,
``fallback.exhausted``), a recovery or a degradation (``recovery.recovered``,
``degradation.changed``), a stall the stream guard saw (``stream.stalled``), or a stream
ended by an error or a cancellation (``stream.cancelled`` whose reason is not
``"closed"``: a consumer that merely stopped reading noticed nothing).
A ``daemon.down`` does not count: the daemon records it when the fault kills it, whatever
the app does. An app that notices with code of its own says so with
:func:`pytest_resilience.core.app.fell_back` or :func:`~pytest_resilience.core.app.retried`.
An app that notices by raising an error leaves no event: the cuts at sites the test
asked for itself (``asked``), whose assertions may expect that error, are not judged.

``closed`` is judged on the resources given as ``open_resources`` (the leak check's
:class:`~pytest_resilience.core.leaks.Leak` records, or the open-resource registry's)
whose kind names a stream or a response (``"stream"``, ``"response"``, in any case).

``no-repeat`` reads what each stream that broke after a fault had delivered: the
``delivered`` text of a ``llama.stream_ended_early`` event (the detector of
:mod:`faults.model_use` records it for every llama stream that ends before its last chunk),
the ``partial`` of a ``stream.cancelled`` (not ``"closed"``) or ``stream.stalled`` (the
stream guard's). The journal does not hold what the app answered: the caller gives it
(``answers``, the ``answer=`` of ``assert_resilient``), and without it nothing is judged. An
answer that holds a delivered text twice in a row breaks it: what an app shows when it
retries a broken stream from the start and passes on every chunk again (a correct one skips
what it had delivered, or takes it back). A model whose own answer repeats its first words
right away would break it too: the verdict cannot tell.

``stream-closed`` is judged on the open streams given as ``open_streams``. A stream that
was merely dropped is closed (by its finaliser); one that the app still holds, after it
stopped reading, is not, and holds its ``Llama``: the next call on it raises
``ConcurrentModelUse``.

``bounded`` needs to know which faults fire on every call, which the journal does not
say: it reads the terms of ``specs`` (a ``FaultInjected`` records only the kind and its
arguments). Without specs, it judges nothing. :func:`installed_specs` finds the specs of
the injections installed now that write to a journal.

:class:`VerdictBroken` is the warning the pytest plugin gives a test that broke a
verdict (``resilience_verdicts = warn``, its default). This module never imports pytest.

It stays one module (about 600 lines): the eight verdicts share one reading of the
journal (which retry follows which fault, in which call), and split apart each would
repeat it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from faults.parser import parse
from faults.spec import Spec, SpecError
from pytest_resilience.core.events import (
    AppRetry,
    AttemptFailed,
    Event,
    FaultInjected,
    RetryScheduled,
    StallDetected,
    StreamCancelled,
)
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from faults.spec import Term
    from pytest_resilience.core.leaks import Leak

__all__ = [
    "HOT_LOOP_FLOOR",
    "HOT_LOOP_RETRIES",
    "MAX_RETRIES",
    "VERDICTS",
    "Broken",
    "VerdictBroken",
    "abandonable",
    "check_ids",
    "format_broken",
    "installed_specs",
    "judge",
]

#: Every verdict, by id: what an app that keeps it does.
VERDICTS: Final[Mapping[str, str]] = {
    "retry-after": "honoured Retry-After",
    "backoff": "backed off instead of retrying in a hot loop",
    "bounded": "stopped after a bounded number of attempts",
    "permanent": "did not retry an error that cannot succeed",
    "cut-stream": "did not accept a cut or empty stream as complete",
    "closed": "closed the stream or response it abandoned",
    "no-repeat": "did not deliver again what a broken stream had delivered",
    "stream-closed": "closed the llama stream it stopped reading",
}

#: Retries in a row without waiting that make a hot loop (one immediate retry, a
#: reconnect, is fine; two may be a policy; three is a loop).
HOT_LOOP_RETRIES: Final = 3
#: A wait shorter than this (seconds) is no wait.
HOT_LOOP_FLOOR: Final = 0.01
#: The most retries of one call under a fault that never lets up.
MAX_RETRIES: Final = 10

#: The library of the core's own retries, as ``assert_retried`` names it.
_CORE: Final = "pytest_resilience"
_STREAM_SITES: Final = frozenset({"llama.stream", "daemon.stream"})
_BREAKING_KINDS: Final = frozenset({"lost", "raise", "corrupt"})
#: The kinds of the events that show the app noticed a cut (``stream.cancelled`` aside).
_NOTICED: Final = frozenset(
    {
        "app.retry",
        "retry.scheduled",
        "attempt.failed",
        "retry.gave_up",
        "fallback.used",
        "fallback.exhausted",
        "recovery.recovered",
        "degradation.changed",
        "stream.stalled",
    }
)
_SHOWN = 5  # delays listed in an account, at most


class VerdictBroken(UserWarning):
    """The app broke a verdict under the faults of a test that passed: the message names
    the verdict and its evidence (the fault, the retry, the delay)."""


@dataclass(frozen=True, slots=True)
class Broken:
    """A verdict the app broke: its id (a key of :data:`VERDICTS`), the account of the
    evidence in one line, and the events it rests on."""

    verdict: str
    evidence: str
    events: tuple[Event, ...] = ()

    @property
    def claim(self) -> str:
        """What the app did not do: the verdict's text."""
        return VERDICTS[self.verdict]

    def __str__(self) -> str:
        return f"{self.verdict}: {self.evidence}"


def format_broken(broken: Sequence[Broken]) -> str:
    """The broken verdicts, one a line, each with what the app should have done."""
    return "\n".join(f"  {b.verdict} ({b.claim}): {b.evidence}" for b in broken)


def check_ids(ids: Iterable[str]) -> tuple[str, ...]:
    """``ids`` as a tuple, each checked to be a verdict's id (``ValueError`` naming the
    known ones otherwise, so that a misspelt ``ignore=`` cannot silently ignore nothing)."""
    found = (ids,) if isinstance(ids, str) else tuple(ids)
    unknown = [i for i in found if i not in VERDICTS]
    if unknown:
        raise ValueError(
            f"unknown verdict {', '.join(map(repr, unknown))}; known: {', '.join(VERDICTS)}"
        )
    return found


def installed_specs(journal: Journal) -> list[Spec]:
    """The specs of the injections installed now that write their faults to ``journal``,
    innermost last."""
    from faults.injector import installed  # noqa: PLC0415 - it imports much; only asked here

    return [i.spec for i in installed() if i.journal is journal]


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class _Retry:
    """One retry, the core's or the app's, put down to the last fault before it."""

    event: Event
    library: str
    source: str
    attempt: int  # the attempt that failed
    delay: float
    error: str
    category: str
    cause: FaultInjected | None

    @property
    def who(self) -> str:
        return f"{self.source} ({self.library})" if self.source else self.library


def _retries(events: Sequence[Event]) -> list[_Retry]:
    found: list[_Retry] = []
    failed: dict[tuple[str, int], AttemptFailed] = {}
    cause: FaultInjected | None = None
    for e in events:
        if isinstance(e, FaultInjected):
            cause = e
        elif isinstance(e, AttemptFailed):
            failed[e.source, e.attempt] = e
        elif isinstance(e, RetryScheduled):
            before = failed.get((e.source, e.attempt - 1))
            error, category = ("", "") if before is None else (before.error, before.category)
            found.append(_Retry(e, _CORE, e.source, e.attempt - 1, e.delay, error, category, cause))
        elif isinstance(e, AppRetry):
            found.append(
                _Retry(e, e.library, e.source, e.attempt, e.delay, e.error, e.category, cause)
            )
    return found


def _calls(retries: Sequence[_Retry]) -> list[list[_Retry]]:
    """The retries grouped by call: per callable and library, a run whose attempt numbers
    go up; a number that does not starts the next call."""
    calls: list[list[_Retry]] = []
    current: dict[tuple[str, str], list[_Retry]] = {}
    for r in retries:
        key = (r.library, r.source)
        run = current.get(key)
        if run is None or r.attempt <= run[-1].attempt:
            run = current[key] = []
            calls.append(run)
        run.append(r)
    return calls


_terms: dict[tuple[str, str], Term | None] = {}


def _term(fault: FaultInjected) -> Term | None:
    """The term a fault's record stands for (its kind and arguments), or None when the
    record is not in the grammar (a fault proxy's toxic)."""
    key = (fault.site, fault.fault)
    if key not in _terms:
        try:
            _terms[key] = parse(f"{fault.site}={fault.fault}").entries[0].chain[0]
        except (SpecError, IndexError):
            _terms[key] = None
    return _terms[key]


def _fires_always(fault: FaultInjected, specs: Sequence[Spec]) -> bool:
    """Whether a term of ``specs`` that fires on every call (from its ``@n+`` on) wrote
    ``fault``: no ``count*``, no ``pct%``."""
    for spec in specs:
        for entry in spec.entries:
            if str(entry.site) != fault.site:
                continue
            for term in entry.chain:
                if term.action != fault.fault or term.pct is not None or term.count is not None:
                    continue
                if term.at is None or term.at_and_after:
                    return True
    return False


def _fault(fault: FaultInjected, calls: Sequence[int] = ()) -> str:
    numbers = sorted(set(calls)) or [fault.call]
    word = "call" if len(numbers) == 1 else "calls"
    return f"{fault.site}={fault.fault} ({word} {_ranges(numbers)})"


def _ranges(numbers: Sequence[int]) -> str:
    parts: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _delays(retries: Sequence[_Retry]) -> str:
    shown = ", ".join(_seconds(r.delay) for r in retries[:_SHOWN])
    return shown + (", ..." if len(retries) > _SHOWN else "")


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


# -------------------------------------------------------------------------- verdicts


def _retry_after(retries: Sequence[_Retry]) -> list[Broken]:
    early: dict[tuple[str, str, str, str], tuple[float, list[_Retry]]] = {}
    for r in retries:
        term = None if r.cause is None else _term(r.cause)
        if r.cause is None or term is None or term.kind not in ("ratelimit", "status"):
            continue
        asked = term.arg("retry_after")
        if not isinstance(asked, int | float) or r.delay >= asked:
            continue
        key = (r.library, r.source, r.cause.site, r.cause.fault)
        early.setdefault(key, (float(asked), []))[1].append(r)
    found = []
    for asked, group in early.values():
        causes = [r.cause.call for r in group if r.cause is not None]
        assert group[0].cause is not None
        found.append(
            Broken(
                "retry-after",
                f"{group[0].who} retried {_times(len(group))} sooner than Retry-After: "
                f"waited {_delays(group)} after {_fault(group[0].cause, causes)}, which "
                f"asked for {_seconds(asked)}",
                tuple(e for r in group for e in (r.cause, r.event) if e is not None),
            )
        )
    return found


def _backoff(calls: Sequence[Sequence[_Retry]]) -> list[Broken]:
    longest: dict[tuple[str, str, str, str], list[_Retry]] = {}
    for call in calls:
        streaks: list[list[_Retry]] = []  # retries in a row without waiting, after one fault
        for r in call:
            hot = r.cause is not None and r.delay < HOT_LOOP_FLOOR
            if hot and streaks and streaks[-1] and _same_fault(streaks[-1][-1].cause, r.cause):
                streaks[-1].append(r)
            else:
                streaks.append([r] if hot else [])
        for streak in streaks:
            if len(streak) < HOT_LOOP_RETRIES:
                continue
            first = streak[0]
            assert first.cause is not None
            key = (first.library, first.source, first.cause.site, first.cause.fault)
            if len(streak) > len(longest.get(key, ())):
                longest[key] = streak
    found = []
    for streak in longest.values():
        causes = [r.cause.call for r in streak if r.cause is not None]
        assert streak[0].cause is not None
        found.append(
            Broken(
                "backoff",
                f"{streak[0].who} retried {len(streak)} times in a row without backing off "
                f"(waited {_delays(streak)}) after {_fault(streak[0].cause, causes)}",
                tuple(r.event for r in streak),
            )
        )
    return found


def _same_fault(a: FaultInjected | None, b: FaultInjected | None) -> bool:
    return a is not None and b is not None and (a.site, a.fault) == (b.site, b.fault)


def _bounded(calls: Sequence[Sequence[_Retry]], specs: Sequence[Spec]) -> list[Broken]:
    longest: dict[tuple[str, str, str, str], Sequence[_Retry]] = {}
    for call in calls:
        if len(call) <= MAX_RETRIES:
            continue
        beyond = call[MAX_RETRIES]  # the first retry past the bound
        if beyond.cause is None or not _fires_always(beyond.cause, specs):
            continue
        key = (beyond.library, beyond.source, beyond.cause.site, beyond.cause.fault)
        if len(call) > len(longest.get(key, ())):
            longest[key] = call
    found = []
    for call in longest.values():
        beyond = call[MAX_RETRIES]
        assert beyond.cause is not None
        found.append(
            Broken(
                "bounded",
                f"{beyond.who} retried one call {len(call)} times under "
                f"{beyond.cause.site}={beyond.cause.fault}, which fires on every call: "
                f"nothing stopped it within {MAX_RETRIES} retries",
                (beyond.cause, *(r.event for r in call)),
            )
        )
    return found


def _permanent(retries: Sequence[_Retry]) -> list[Broken]:
    groups: dict[tuple[str, str, str], list[_Retry]] = {}
    for r in retries:
        if r.cause is not None and r.category == "permanent":
            key = (r.library, r.source, r.error.partition(": ")[0])
            groups.setdefault(key, []).append(r)
    found = []
    for group in groups.values():
        first = group[0]
        assert first.cause is not None
        causes = [r.cause.call for r in group if r.cause and _same_fault(r.cause, first.cause)]
        found.append(
            Broken(
                "permanent",
                f"{first.who} retried {_times(len(group))} an error that cannot succeed: "
                f"{first.error or 'an error'} (category permanent) after "
                f"{_fault(first.cause, causes)}",
                (first.cause, *(r.event for r in group)),
            )
        )
    return found


def _is_cut(fault: FaultInjected) -> bool:
    term = _term(fault)
    if term is None:
        return False
    return term.kind == "truncate" or (fault.site in _STREAM_SITES and term.kind in _BREAKING_KINDS)


def _noticed(event: Event) -> bool:
    if isinstance(event, StreamCancelled):
        return event.reason != "closed"
    return event.kind in _NOTICED


def _cut_stream(events: Sequence[Event], asked: frozenset[str]) -> list[Broken]:
    unnoticed: dict[tuple[str, str], list[FaultInjected]] = {}
    for index, e in enumerate(events):
        if not isinstance(e, FaultInjected) or e.site in asked or not _is_cut(e):
            continue
        window = []
        for later in events[index + 1 :]:
            if isinstance(later, FaultInjected) and later.site == e.site:
                break
            window.append(later)
        if not any(_noticed(w) for w in window):
            unnoticed.setdefault((e.site, e.fault), []).append(e)
    return [
        Broken(
            "cut-stream",
            f"{_fault(cuts[0], [c.call for c in cuts])} cut the stream, and the test passed "
            "with no retry, fallback, stall or error recorded after it: the cut answer was "
            "taken as complete",
            tuple(cuts),
        )
        for cuts in unnoticed.values()
    ]


def abandonable(leak: Leak) -> bool:
    """Whether ``closed`` judges ``leak``: a resource whose kind names a stream or a
    response."""
    what = leak.what.lower()
    return "stream" in what or "response" in what


def _closed(faults: Sequence[FaultInjected], open_resources: Iterable[Leak]) -> list[Broken]:
    left = [leak for leak in open_resources if abandonable(leak)]
    if not left:
        return []
    near = [f for f in faults if f.site in _STREAM_SITES or f.site.startswith("daemon.")]
    fault = (near or faults)[0]
    more = len(faults) - 1
    after = _fault(fault) + (f" and {more} more fault{'s' if more > 1 else ''}" if more else "")
    return [
        Broken("closed", f"{leak} was still open when the test ended, after {after}", (fault,))
        for leak in left
    ]


#: The kind of the detector's event for a llama stream that ended early (its module,
#: faults.model_use, is imported only by those who use the detector).
_ENDED_EARLY: Final = "llama.stream_ended_early"
_EXCERPT: Final = 60  # characters of an answer shown in an account


def _delivered(event: Event) -> str:
    """What a stream had delivered when it broke, by ``event``; "" for other events."""
    if event.kind == _ENDED_EARLY:
        return str(getattr(event, "delivered", ""))
    if isinstance(event, StreamCancelled) and event.reason != "closed":
        return event.partial
    if isinstance(event, StallDetected):
        return event.partial
    return ""


def _excerpt(text: str, at: int) -> str:
    start = max(0, at - 10)
    shown = text[start : start + _EXCERPT]
    return (
        ("..." if start else "")
        + repr(shown)[1:-1]
        + ("..." if len(text) > start + _EXCERPT else "")
    )


def _no_repeat(events: Sequence[Event], answers: Sequence[str]) -> list[Broken]:
    if not answers:
        return []
    found: list[Broken] = []
    seen: set[tuple[str, str]] = set()
    cause: FaultInjected | None = None
    for e in events:
        if isinstance(e, FaultInjected):
            cause = e
            continue
        text = _delivered(e) if cause is not None else ""
        if not text:
            continue
        for answer in answers:
            at = answer.find(text + text)
            if at < 0 or (text, answer) in seen:
                continue
            seen.add((text, answer))
            assert cause is not None
            found.append(
                Broken(
                    "no-repeat",
                    f"a stream broke after {_fault(cause)} having delivered {text!r}, and "
                    f"the answer delivers it again: '{_excerpt(answer, at)}' (retried from "
                    "the start without skipping what was delivered)",
                    (cause, e),
                )
            )
    return found


def _stream_closed(faults: Sequence[FaultInjected], open_streams: Iterable[Leak]) -> list[Broken]:
    left = list(open_streams)
    if not left:
        return []
    near = [f for f in faults if f.site.startswith("llama.")]
    fault = (near or faults)[0]
    return [
        Broken(
            "stream-closed",
            f"{leak.detail}, opened at {leak.where or 'an unknown site'}, was neither "
            f"exhausted nor closed, after {_fault(fault)}: the app stopped reading it and "
            "kept it open (close it, or read it to the end)",
            (fault,),
        )
        for leak in left
    ]


def judge(
    journal: Journal | Iterable[Event],
    *,
    specs: Spec | Iterable[Spec] = (),
    open_resources: Iterable[Leak] = (),
    passed: bool = True,
    asked: Iterable[str] = (),
    ignore: Iterable[str] = (),
    answers: Iterable[str] = (),
    open_streams: Iterable[Leak] = (),
) -> list[Broken]:
    """The verdicts the app broke under the faults recorded in ``journal``, in the order
    of :data:`VERDICTS`; an empty list when it broke none, or when no fault fired.

    ``specs``: the specs the faults came from (for ``bounded``); ``open_resources``: what
    was still open when the test ended (for ``closed``); ``passed``: whether the test
    passed (``cut-stream`` judges only a test that did: one that failed took nothing as
    complete); ``asked``: sites whose cuts ``cut-stream`` leaves alone, because the test
    asked for them itself and its own assertions say what the app should do about them
    (an app that noticed by raising an error the test expected leaves no event to see);
    ``ignore``: ids of verdicts not to judge (``ValueError`` for an unknown one);
    ``answers``: what the app answered, for ``no-repeat`` (a string, or several);
    ``open_streams``: the llama streams left open, for ``stream-closed``. A pure function of
    its arguments.
    """
    skipped = set(check_ids(ignore))
    events = journal.events() if isinstance(journal, Journal) else list(journal)
    faults = [e for e in events if isinstance(e, FaultInjected)]
    if not faults:
        return []
    spec_list = [specs] if isinstance(specs, Spec) else list(specs)
    retries = _retries(events)
    calls = _calls(retries)
    found: dict[str, list[Broken]] = {
        "retry-after": _retry_after(retries),
        "backoff": _backoff(calls),
        "bounded": _bounded(calls, spec_list),
        "permanent": _permanent(retries),
        "cut-stream": _cut_stream(events, frozenset(asked)) if passed else [],
        "closed": _closed(faults, open_resources),
        "no-repeat": _no_repeat(events, [answers] if isinstance(answers, str) else [*answers]),
        "stream-closed": _stream_closed(faults, open_streams),
    }
    return [b for verdict, group in found.items() if verdict not in skipped for b in group]
