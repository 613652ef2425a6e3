"""The fault injector: make a local-LLM application fail on demand, reproducibly.

This package holds the fault grammar and its data model (:mod:`faults.spec`), the table of
fault kinds and sites (:mod:`faults.kinds`) and the failpoint schedule that decides when a
fault fires (:mod:`faults.schedule`)::

    >>> from faults import parse, Schedule
    >>> spec = parse("llama.generate=2*none;py:myapp.llm:Client.ask=3*raise(ConnectionError)")
    >>> str(spec.entries[0])
    'llama.generate=2*none'
    >>> schedule = Schedule.for_entry(spec.entries[0], seed=1234, scope="test_x")
    >>> [d and d.term.kind for d in (schedule.decide() for _ in range(3))]
    ['none', 'none', None]

It imports the core (``pytest_resilience``) and never pytest.
"""

from __future__ import annotations

from faults.injector import FaultNotReached, Injector, Unreached, inject
from faults.journal import JournalFileError, Recording
from faults.kinds import KINDS, SITES, ArgType, KindInfo, Param
from faults.schedule import Decision, Schedule, derive_rng, schedules
from faults.spec import Entry, Site, Spec, SpecError, Term, format_duration, merge, parse
from faults.target import Target

__all__ = [
    "KINDS",
    "SITES",
    "ArgType",
    "Decision",
    "Entry",
    "FaultNotReached",
    "Injector",
    "JournalFileError",
    "KindInfo",
    "Param",
    "Recording",
    "Schedule",
    "Site",
    "Spec",
    "SpecError",
    "Target",
    "Term",
    "Unreached",
    "derive_rng",
    "format_duration",
    "inject",
    "merge",
    "parse",
    "schedules",
]
