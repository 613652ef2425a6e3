"""Scenario files: a failure, the steps that meet it, and what must hold.

A scenario is a TOML file, read with the stdlib ``tomllib``; Chaos Toolkit's experiment is
the model: a steady state checked before and after, a method (the steps, run under the
faults), and rollbacks that always run. pytest collects scenario files as test items (the
plugin calls :func:`load` and :func:`run`); ``python -m faults.scenario scenarios/`` runs a
folder of them and prints a report.

::

    scenario = load("scenarios/daemon_lost.toml")      # ScenarioError: file, line, key
    outcome = run(scenario, seed=1234)
    if not outcome.passed:
        print(format_failure(outcome))                  # failures, timeline, replay command

The file (UTF-8; every key is checked: an unknown key, a wrong type, a value over its cap
or nesting deeper than :data:`MAX_DEPTH` is a :class:`ScenarioError` naming the file, the
line and the key, with a suggestion for a misspelt key; ``title``, ``model`` and names are
one line of printable text)::

    version = 1                       # required; the only version so far
    title = "..."                     # required
    seed = 1234                       # the fault seed, 0 to 2**64 - 1 (default 0);
                                      # run(seed=) replaces it: pass one only when the
                                      # user asked (--fault-seed N, --seed N; see
                                      # seed_override)
    clock = "virtual"                 # "virtual" (default: waits cost nothing) or "real"

    [target]                          # what the steps call: one of client, factory, callable
    client = "resilient"              # llama | daemon | resilient (default llama) ...
    factory = "myapp.llm:build"       # ... or factory(TargetContext) -> a Backend adapter ...
    callable = "myapp.chat:answer"    # ... or an app function (sync or async), which "call"
                                      # steps call; a top-level `target = "myapp.chat:answer"`
                                      # is short for this. Given the scenario's clock and
                                      # journal when it has parameters of those names
    model = "tiny"                    # tiny | tiny-small | gemma3-270m | a .gguf path
                                      # (relative to the scenario file); default tiny
    max_tokens = 32                   # generation length of every step (default 32)
    timeout = 10.0                    # resilient: seconds per daemon call (default 10)
    policy = "raise"                  # resilient: raise | never_fail
    daemon_url = "http://127.0.0.1:11434"   # factory, callable: the app's own server, which
                                      # daemon.* faults act on (not daemon.process)
    route = "wire"                    # daemon, resilient: daemon.* faults through a fault
                                      # proxy in front of the daemon, in real time (default
                                      # "hooks": in the HTTP clients, on the scenario's clock)
    errors = ["myapp.errors.ModelDown"]     # more exceptions that count as a failed op

    [faults]
    spec = "daemon.stream=@2lost(after=3)"     # the --inject-faults grammar

    [resilience.retry]                # every table optional; each configures one core object
    attempts = 3                      # counting the first; at most MAX_ATTEMPTS (100)
    base = 0.5                        # Backoff(base, factor, cap, jitter)
    factor = 2.0
    cap = 30.0
    jitter = "full"                   # none | full | equal | decorrelated | proportional
    budget = 60.0                     # seconds for all attempts
    on = ["InvalidOutput"]            # exception names (builtins, pytest_resilience errors,
                                      # dotted paths: checked at load, imported by run());
                                      # default: BackendError, ConnectionError, TimeoutError
    on_result = "none"                # also retry a None ("none") or empty ("empty") answer
    [resilience.breaker]
    name = "model"                    # the journal source (default: "daemon" for daemon and
                                      # resilient targets, else "model")
    failures = 3                      # consecutive failures that open it
    recovery = 30.0                   # seconds open before half-open
    probes = 1
    successes = 1                     # probe successes that close it
    on = ["BackendError"]             # what counts as a failure (default as retry's)
    [resilience.stream]               # the StreamGuard
    first_token = 10.0
    idle = 5.0
    total = 120.0
    on_stall = "return"               # return (keep the partial answer) | raise
    [resilience.fallback]             # a chain after the target's model
    models = ["tiny-small"]           # step names are the model names
    static = "The model is resting."  # a last step that always answers (text ops)
    [resilience.degrade]              # a Degrader; OOM steps down at once
    models = ["tiny", "tiny-small"]   # large to small: the level picks the model
    lowest = "minimal"                # reduced | minimal | cached_only | static
    [resilience.checkpoint]           # what the "job" op does
    key = "story"
    parts = 5                         # one generation per part, a checkpoint after each
                                      # (at most MAX_PARTS, 1000)
    killed_after = 2                  # the first run is a child process, SIGKILLed once
                                      # it has saved 2 checkpoints; the job then resumes
                                      # in process from what it left on disk

    [steady_state]                    # optional: a probe that must succeed before the
    op = "generate"                   # steps, and again after them once the faults are
    prompt = "Hello"                  # removed (generate | stream | embed | chat)

    [[steps]]                         # run in order, under the faults
    op = "stream"                     # generate | stream | embed | chat | job (model ops)
                                      # call (a callable target's op)
                                      # kill_daemon | pause_daemon | resume_daemon |
                                      # restart_daemon | advance (act on the world)
    prompt = "Tell me a story"        # call: the first argument, when there is no args
    args = ["Tell me a story"]        # call: the positional arguments
    kwargs = { temperature = 0.2 }    # call: the keyword arguments
    repeat = 5                        # default 1; at most MAX_REPEAT (10000)
    seconds = 30.0                    # advance: virtual seconds (real clock: sleeps)
    max_tokens = 16                   # overrides the target's
    resilience = { retry = { attempts = 5 } }   # per step: retry and stream only (the
                                      # stateful breaker, fallback, degradation and
                                      # checkpoint belong to the whole scenario)

    [expect]                          # evaluated over the journal of the steps
    success_rate = 1.0                # model ops (or calls) that answered / all of them,
                                      # to 0.005
    fallbacks = ["direct"]            # the fallback steps that answered, in first-use order
    transitions.daemon = ["closed->open", "open->half_open", "half_open->closed"]
    max_attempts = 3                  # no call took more attempts than this
    retries = 2                       # retries scheduled, exactly
    rejected = 1                      # calls an open breaker refused, exactly
    min_retry_delay = 5.0             # every retry waited at least this (Retry-After)
    degraded_to = "reduced"           # the degradation level at the end
    partial_kept = true               # a stalled stream kept what it had delivered
    source_closed = true              # every guarded stream's source was closed
    resumed_from_checkpoint = true    # a job resumed from its last checkpoint
    faults_injected = 2               # faults that fired, exactly
    leaks = "none"                    # no thread, fd or child process left behind

Model ops and calls count towards ``success_rate``: an op *fails* when it raises one of the
errors a failure produces (any :class:`~pytest_resilience.core.errors.ResilienceError`,
``OSError``, ``TimeoutError``, ``MemoryError``, and the target's ``errors``) or answers
``None``; a stream that stalls with ``on_stall = "return"`` answers (with its partial
text). A call of an async function runs on an event loop of its own (under a virtual
clock, one whose ``asyncio.sleep`` is virtual); a generator's items are read to the end.
A callable target takes ``[resilience.retry]`` and ``[resilience.breaker]`` only, and
cannot expect ``partial_kept`` or ``source_closed``. Any other exception ends the steps
(``Outcome.error``); the rollbacks run all the same: the faults are uninstalled, every
stream, backend and client is closed, the daemon is stopped, the checkpoint folder removed.

Under a virtual clock the daemon (a real child process) still runs in real time; only the
waits of the core and of the injected faults are virtual. Daemon targets start
``llama_cpp.server`` with the chosen model (``n_threads=1``; with embeddings configured
when a step embeds, in which case that daemon serves embeddings only).

Every step and model op is journaled (``scenario.step``, ``scenario.op`` events) next to
the faults and the reactions, so :meth:`Journal.timeline` reads as one story.

The package, one module per part, each importing only those above it: ``reading`` (the
file's bytes, text, TOML and line numbers; :class:`ScenarioError`), ``schema`` (every key
and what it must be), ``model`` (:class:`Target`, :class:`Step`, :class:`Scenario`),
``policies`` (the core objects of a ``[resilience]`` table), ``callables`` (callable
targets), ``names`` (exception names), ``load`` (:func:`load`, :func:`loads`,
:func:`spec_of`), ``events`` (:class:`ScenarioStep`, :class:`ScenarioOp`), ``outcome``
(:class:`Outcome`, :class:`Stats`), ``world`` (what a run builds and takes down), ``ops``
(the steps and the job's child process), ``runner`` (:func:`run`), ``report``
(:func:`format_report`, :func:`format_failure`) and ``cli`` (:func:`main`, behind
``python -m faults.scenario``). What ``__all__`` lists is imported here; everything else
is imported from its module.
"""

from __future__ import annotations

from faults.scenario.cli import USAGE_ERROR, main
from faults.scenario.events import ScenarioOp, ScenarioStep
from faults.scenario.load import load, loads, spec_of
from faults.scenario.model import Scenario, Step, Target
from faults.scenario.outcome import Outcome, Stats
from faults.scenario.reading import MAX_DEPTH, ScenarioError, key_lines
from faults.scenario.report import format_failure, format_report, replay_command
from faults.scenario.runner import run, seed_override
from faults.scenario.schema import MAX_ATTEMPTS, MAX_PARTS, MAX_REPEAT, MAX_SEED
from faults.scenario.world import TargetContext

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_DEPTH",
    "MAX_PARTS",
    "MAX_REPEAT",
    "MAX_SEED",
    "USAGE_ERROR",
    "Outcome",
    "Scenario",
    "ScenarioError",
    "ScenarioOp",
    "ScenarioStep",
    "Stats",
    "Step",
    "Target",
    "TargetContext",
    "format_failure",
    "format_report",
    "key_lines",
    "load",
    "loads",
    "main",
    "replay_command",
    "run",
    "seed_override",
    "spec_of",
]
