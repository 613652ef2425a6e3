"""The fault injector: make a local-LLM application fail on demand, reproducibly.

What a test needs is here: :func:`inject` (an :class:`Injector`; ``Injector.replay`` runs
a saved journal again), :func:`parse` and the :class:`Spec` it returns, :class:`SpecError`,
the :class:`Schedule` that decides when a site's faults fire, :class:`Target` for an app's
own model server, and the :class:`FaultNotReached` warning::

    >>> from faults import parse, Schedule
    >>> spec = parse("llama.generate=2*none;py:myapp.llm:Client.ask=3*raise(ConnectionError)")
    >>> str(spec.entries[0])
    'llama.generate=2*none'
    >>> schedule = Schedule.for_entry(spec.entries[0], seed=1234, scope="test_x")
    >>> [d and d.term.kind for d in (schedule.decide() for _ in range(3))]
    ['none', 'none', None]

The rest lives in its module: the grammar (:mod:`faults.parser`) and the spec's data model
(:mod:`faults.spec`), the table of kinds and sites (:mod:`faults.kinds`) and what the kinds
do (:mod:`faults.effects`), schedules (:mod:`faults.schedule`), saved journals
(:mod:`faults.journal`), and hypothesis strategies for fault specs
(:mod:`faults.strategies`, the only module that imports hypothesis).

It imports the core (``pytest_resilience``) and never pytest.
"""

from __future__ import annotations

from faults.injector import FaultNotReached, Injector, inject
from faults.journal import JournalFileError
from faults.parser import parse
from faults.schedule import Schedule
from faults.spec import Spec, SpecError
from faults.target import Target
from faults.verdicts import VerdictBroken

__all__ = [
    "FaultNotReached",
    "Injector",
    "JournalFileError",
    "Schedule",
    "Spec",
    "SpecError",
    "Target",
    "VerdictBroken",
    "inject",
    "parse",
]
