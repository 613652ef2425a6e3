"""The injector on ``py:`` targets: every kind of callable, every kind that fits, exact
restoration, nesting, hangs in virtual time, and the events it writes."""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING

import pytest

import faults
from faults import Injector, SpecError
from pytest_resilience.core.cancel import cancel_scope, deadline
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import DaemonLost, DeadlineExceeded, HangDetected
from pytest_resilience.core.events import FaultInjected
from pytest_resilience.core.journal import Journal
from tests.unit import fault_targets as t
from tests.unit.interleave import Gate, GatedCounter, parked, run_together, switching_often

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterator

M = "py:tests.unit.fault_targets"


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture(autouse=True)
def _reset_counts() -> Iterator[None]:
    t.CALLS.clear()
    yield
    t.CALLS.clear()


def _originals() -> dict[str, object]:
    """Every attribute the tests patch, as stored, to compare by identity afterwards."""
    found: dict[str, object] = {
        n: vars(t)[n] for n in ("answer", "aanswer", "words", "awords", "vector")
    }
    found |= {f"Client.{n}": vars(t.Client)[n] for n in ("ask", "version", "make", "aask")}
    found |= {f"target_{i}": vars(t)[f"target_{i}"] for i in range(10)}
    return found


ORIGINALS = _originals()


def _assert_restored() -> None:
    now = _originals()
    for name, original in ORIGINALS.items():
        assert now[name] is original, name
    assert "ask" not in vars(t.SubClient)


# -------------------------------------------------------------------- plain functions


def test_none_then_pass_through_counts_calls_and_injections(vclock: VirtualClock) -> None:
    journal = Journal()
    with faults.inject(f"{M}:answer=2*none", seed=7, clock=vclock, journal=journal) as run:
        results = [t.answer("q") for _ in range(4)]
    assert results == [None, None, "yes, q", "yes, q"]
    assert t.CALLS["answer"] == 2  # the faulted calls never ran the body
    assert run.calls(f"{M}:answer") == 4
    assert run.injected(f"{M}:answer") == 2
    events = journal.events(FaultInjected)
    assert [(e.site, e.fault, e.call, e.source) for e in events] == [
        (f"{M}:answer", "none", 1, "faults"),
        (f"{M}:answer", "none", 2, "faults"),
    ]
    assert [(site, d.call) for site, d in run.decisions] == [(f"{M}:answer", 1), (f"{M}:answer", 2)]
    _assert_restored()


def test_raise_builds_the_named_exception_with_the_message() -> None:
    spec = f'{M}:answer=@2raise(ConnectionError, "the wire is down")->@3+raise(DaemonLost)'
    with faults.inject(spec):
        assert t.answer("a") == "yes, a"
        with pytest.raises(ConnectionError, match="the wire is down"):
            t.answer("b")
        with pytest.raises(DaemonLost, match="fault injected at py:"):
            t.answer("c")
    _assert_restored()


def test_oom_is_a_memory_error_and_corrupt_empties_or_shortens() -> None:
    with faults.inject(f"{M}:answer=1*oom->corrupt;{M}:vector=corrupt") as run:
        with pytest.raises(MemoryError):
            t.answer("x")
        assert t.answer("x") == ""
        assert t.vector(4) == [0.0, 1.0, 2.0]  # one dimension short
    assert run.injected(f"{M}:answer") == 2
    assert t.CALLS == {"answer": 1, "vector": 1}


def test_timeout_is_ended_by_a_deadline_in_virtual_time(vclock: VirtualClock) -> None:
    started = time.perf_counter()
    with (
        faults.inject(f"{M}:answer=timeout(10m)", clock=vclock),
        pytest.raises(DeadlineExceeded),
        deadline(60.0, clock=vclock),
    ):
        t.answer("slow")
    assert vclock.now() == pytest.approx(60.0)
    assert t.CALLS["answer"] == 0
    # generous, for a loaded machine: the 60 s deadline waited out in real time exceeds it
    assert time.perf_counter() - started < 30.0


def test_a_timeout_that_runs_out_raises_timeout_error(vclock: VirtualClock) -> None:
    with (
        faults.inject(f"{M}:answer=timeout(30s)", clock=vclock),
        pytest.raises(TimeoutError, match="no answer within 30s"),
    ):
        t.answer("slow")
    assert vclock.now() == pytest.approx(30.0)


def test_latency_delays_then_answers_on_the_clock(vclock: VirtualClock) -> None:
    with faults.inject(f"{M}:answer=latency(2s, 500ms)", seed=3, clock=vclock):
        assert t.answer("late") == "yes, late"
        first = vclock.now()
        assert t.answer("late") == "yes, late"
    assert 1.5 <= first <= 2.5
    assert 3.0 <= vclock.now() <= 5.0


@pytest.mark.timeout(10)
def test_an_unguarded_hang_is_reported_naming_the_site_never_hangs(vclock: VirtualClock) -> None:
    with faults.inject(f"{M}:answer=timeout", clock=vclock), pytest.raises(HangDetected) as hung:
        t.answer("forever")
    message = str(hung.value)
    assert f"{M}:answer" in message
    assert "which no timeout or deadline guards" in message


@pytest.mark.timeout(10)
def test_a_hang_in_a_scope_without_deadline_is_reported_too(vclock: VirtualClock) -> None:
    with (
        faults.inject(f"{M}:answer=timeout", clock=vclock),
        cancel_scope(clock=vclock),
        pytest.raises(HangDetected, match="fault_targets:answer"),
    ):
        t.answer("forever")


def test_ten_sites_timing_out_ten_minutes_cost_no_wall_time(vclock: VirtualClock) -> None:
    spec = ";".join(f"{M}:target_{i}=timeout(10m)" for i in range(10))
    targets = [getattr(t, f"target_{i}") for i in range(10)]
    started = time.perf_counter()
    with faults.inject(spec, clock=vclock) as run:
        for i in range(10):
            with pytest.raises(DeadlineExceeded), deadline(60.0, clock=vclock):
                getattr(t, f"target_{i}")()
    elapsed = time.perf_counter() - started
    # generous, for a loaded machine: one of the 60 s deadlines waited out in real time
    # would exceed it
    assert elapsed < 30.0, elapsed
    assert vclock.now() == pytest.approx(600.0)
    assert all(run.injected(f"{M}:target_{i}") == 1 for i in range(10))
    assert [getattr(t, f"target_{i}") for i in range(10)] == targets


# -------------------------------------------------------------------------- methods


def test_instance_static_and_class_methods_are_patched_and_restored() -> None:
    spec = f"{M}:Client.ask=1*none;{M}:Client.version=1*raise(KeyError);{M}:Client.make=1*none"
    client = t.Client("c")
    with faults.inject(spec):
        assert client.ask("hi") is None
        assert client.ask("hi") == "c: hi"
        assert isinstance(vars(t.Client)["version"], staticmethod)
        assert isinstance(vars(t.Client)["make"], classmethod)
        with pytest.raises(KeyError):
            t.Client.version()
        assert t.Client.version() == "1.0"
        assert client.version() == "1.0"
        assert t.Client.make("m") is None
        made = t.SubClient.make("s")
        assert type(made) is t.SubClient  # cls is still bound right
    _assert_restored()


def test_an_inherited_method_is_patched_on_the_subclass_only() -> None:
    with faults.inject(f"{M}:SubClient.ask=none"):
        assert t.SubClient("s").ask("x") is None
        assert t.Client("c").ask("x") == "c: x"
    _assert_restored()


def test_the_wrapper_keeps_name_doc_and_signature() -> None:
    before = inspect.signature(t.answer)
    with faults.inject(f"{M}:answer=none;{M}:words=none;{M}:aanswer=none;{M}:awords=none"):
        assert t.answer is not ORIGINALS["answer"]
        assert t.answer.__name__ == "answer"
        assert t.answer.__doc__ == "Answer a question."
        assert inspect.signature(t.answer) == before
        assert t.answer.__wrapped__ is ORIGINALS["answer"]  # type: ignore[attr-defined]
        assert inspect.isgeneratorfunction(t.words)
        assert inspect.iscoroutinefunction(t.aanswer)
        assert inspect.isasyncgenfunction(t.awords)
    _assert_restored()


# -------------------------------------------------------------------------- async


def test_async_functions_and_methods(vclock: VirtualClock) -> None:
    spec = f"{M}:aanswer=1*none->1*raise(ValueError)->timeout(1m);{M}:Client.aask=corrupt"

    async def main() -> list[object]:
        seen: list[object] = [await t.aanswer("a")]
        try:
            await t.aanswer("b")
        except ValueError as exc:
            seen.append(type(exc))
        try:
            async with deadline(5.0):
                await t.aanswer("c")
        except DeadlineExceeded:
            seen.append("deadline")
        seen.append(await t.Client("c").aask("x"))
        return seen

    with faults.inject(spec, clock=vclock):
        assert vclock.run(main()) == [None, ValueError, "deadline", ""]
    assert vclock.now() == pytest.approx(5.0)
    assert t.CALLS == {"Client.aask": 1}
    _assert_restored()


# ------------------------------------------------------------------------ generators


def test_a_generator_passes_through_with_its_return_value() -> None:
    with faults.inject(f"{M}:words=@2none") as run:
        gen = t.words("a b c")
        assert run.calls(f"{M}:words") == 0  # counted at the first next()
        assert [next(gen), next(gen), next(gen)] == ["a", "b", "c"]
        with pytest.raises(StopIteration) as done:
            next(gen)
        assert done.value.value == 3
        assert list(t.words("a b")) == []  # call 2: none ends it at once
    assert run.calls(f"{M}:words") == 2


def test_generator_stall_truncate_corrupt_and_raise(vclock: VirtualClock) -> None:
    spec = (
        f"{M}:words=@1stall(after=2)->@2truncate(after=1)->@3corrupt->@4raise(OSError)"
        "->@5stall(after=1, for=3s)"
    )
    with faults.inject(spec, clock=vclock):
        got: list[str] = []
        with pytest.raises(DeadlineExceeded), deadline(10.0, clock=vclock):
            got.extend(t.words("a b c d"))
        assert got == ["a", "b"]
        assert vclock.now() == pytest.approx(10.0)
        assert list(t.words("a b c")) == ["a"]
        assert list(t.words("a b")) == ["", ""]
        with pytest.raises(OSError, match="fault injected"):
            next(t.words("a"))
        assert list(t.words("x y z")) == ["x", "y", "z"]  # a 3 s stall, then on
    assert vclock.now() == pytest.approx(13.0)


def test_async_generator_stall_is_cancelled_by_its_deadline(vclock: VirtualClock) -> None:
    async def main() -> tuple[list[str], list[str]]:
        got: list[str] = []
        try:
            async with deadline(4.0):
                async for word in t.awords("a b c"):
                    got.append(word)  # noqa: PERF401 - keep what came before the stall
        except DeadlineExceeded:
            pass
        cut = [w async for w in t.awords("a b c")]
        return got, cut

    with faults.inject(f"{M}:awords=1*stall(after=1)->truncate(after=2)", clock=vclock):
        assert vclock.run(main()) == (["a"], ["a", "b"])
    assert vclock.now() == pytest.approx(4.0)


def test_stall_on_a_function_that_is_not_a_generator_fails_at_install() -> None:
    with pytest.raises(SpecError, match="not a generator function") as bad:
        faults.inject(f"{M}:words=none;{M}:answer=stall(after=1)").install()
    assert "^" in str(bad.value)
    _assert_restored()  # the first site, installed before, was undone


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (f"{M}:nothing=none", "has no attribute 'nothing'"),
        ("py:tests.unit.no_such_module:f=none", "cannot import"),
        (f"{M}:answer=raise(tests.unit.fault_targets.Client)", "is not an exception class"),
        (f"{M}:CALLS=none", "cannot patch"),
    ],
)
def test_a_site_that_cannot_be_installed_is_a_spec_error(spec: str, words: str) -> None:
    with pytest.raises(SpecError, match=words):
        Injector(spec).install()
    _assert_restored()


def test_a_malformed_spec_raises_spec_error_at_construction() -> None:
    with pytest.raises(SpecError, match="unknown fault kind"):
        Injector(f"{M}:answer=explode")


# ------------------------------------------------------------------ nesting, unwinding


def test_injections_nest_and_unwind_in_order() -> None:
    outer = Injector(f"{M}:answer=@1none")
    inner = Injector(f"{M}:answer=raise(ValueError)")
    with outer:
        with inner:
            with pytest.raises(ValueError, match="fault injected"):
                t.answer("x")
            assert outer.calls(f"{M}:answer") == 0  # the inner fault fired first
        assert t.answer("y") is None  # the outer one's first call
        assert t.answer("z") == "yes, z"
    assert (outer.calls(f"{M}:answer"), inner.calls(f"{M}:answer")) == (2, 1)
    _assert_restored()


def test_uninstalling_out_of_order_is_an_error_and_changes_nothing() -> None:
    outer = Injector(f"{M}:answer=none").install()
    inner = Injector(f"{M}:vector=none").install()
    try:
        with pytest.raises(RuntimeError, match="reverse order"):
            outer.uninstall()
        assert t.answer("x") is None
        assert outer.installed
    finally:
        inner.uninstall()
        outer.uninstall()
    _assert_restored()
    with pytest.raises(RuntimeError, match="not installed"):
        outer.uninstall()


def test_a_failing_body_still_restores_everything() -> None:
    spec = f"{M}:answer=none;{M}:Client.version=none;{M}:Client.make=none;{M}:words=none"

    def body() -> None:
        with faults.inject(spec):
            assert t.Client.version() is None
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError):
        body()
    _assert_restored()


def test_an_injector_installs_once_and_names_unknown_sites() -> None:
    run = Injector(f"{M}:answer=none")
    with run, pytest.raises(RuntimeError, match="already installed"):
        run.install()
    with pytest.raises(KeyError, match="not a site of this injection"):
        run.calls(f"{M}:vector")


# ------------------------------------------------------------------ seeds and probability


def _pattern(seed: int, scope: str = "") -> list[bool]:
    with faults.inject(f"{M}:answer=50%none", seed=seed, scope=scope):
        return [t.answer("x") is None for _ in range(40)]


def test_probabilistic_faults_follow_the_seed_and_scope() -> None:
    first = _pattern(1)
    assert first == _pattern(1)
    assert 5 < sum(first) < 35
    assert first != _pattern(2)
    assert first != _pattern(1, scope="test_other")


def test_the_pass_through_path_records_nothing() -> None:
    journal = Journal()
    with faults.inject(f"{M}:answer=@1000none", journal=journal) as run:
        for _ in range(50):
            t.answer("x")
    assert len(journal) == 0
    assert run.decisions == []
    assert run.calls(f"{M}:answer") == 50


def test_a_call_parked_before_its_claim_runs_the_real_function(
    vclock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A site counts its calls and claims its faults with its schedule, without a lock. The
    # first call finds 3*none not used up and parks just before claiming a firing of it;
    # three more calls take all three meanwhile. The parked call must then run the real
    # function: the site faults exactly three calls, and counts each call once.
    site, journal = f"{M}:answer", Journal()
    with faults.inject(f"{site}=3*none", clock=vclock, journal=journal) as run:
        counted = run.schedule(site)._live[0]
        assert counted.claims is not None
        gate = Gate("in the site's decide(), before claiming a firing of 3*none")
        monkeypatch.setattr(counted, "claims", GatedCounter(counted.claims, gate, before=True))
        with parked(gate, lambda: t.answer("first"), "the first call") as first:
            others = [t.answer(str(i)) for i in range(4)]
        assert first.result() == "yes, first"
    assert others == [None, None, None, "yes, 3"]
    assert (run.calls(site), run.injected(site)) == (5, 3)
    assert [d.call for _, d in run.decisions] == [2, 3, 4]
    assert [e.call for e in journal.events(FaultInjected)] == [2, 3, 4]
    assert t.CALLS["answer"] == 2


def test_each_call_of_a_thread_safe_site_is_counted_once(vclock: VirtualClock) -> None:
    site, rounds, per_thread = f"{M}:answer", 100, 100
    results: list[list[tuple[int, str | None]]] = [[] for _ in range(rounds)]
    with faults.inject(f"{site}=100*none", clock=vclock) as run:

        def work(worker: int, start: threading.Barrier) -> None:
            for found in results:
                start.wait()
                if worker == 0:
                    run.restart()  # a fresh 100*none each round, while nobody calls
                start.wait()  # the four threads call together
                mine: list[tuple[int, str | None]] = [
                    (worker, t.answer("x")) for _ in range(per_thread)
                ]
                found.extend(mine)

        with switching_often():
            run_together(work)
    for r, found in enumerate(results):
        assert [answer for _, answer in found].count(None) == 100, f"round {r}"
        calls = [d.call for _, d in run.decisions[100 * r : 100 * (r + 1)]]
        assert len(set(calls)) == 100, f"round {r}: a call number was decided twice"
        assert set(calls) <= set(range(1, 4 * per_thread + 1))
    assert (run.calls(site), run.injected(site)) == (400 * rounds, 100 * rounds)
    assert len(run.journal.events(FaultInjected)) == 100 * rounds
    # The threads really ran at the same time: in some rounds, more than one was faulted.
    assert any(len({w for w, answer in found if answer is None}) > 1 for found in results)


def test_the_async_event_loop_hang_names_the_site(vclock: VirtualClock) -> None:
    async def main() -> None:
        await t.aanswer("forever")

    with (
        faults.inject(f"{M}:aanswer=timeout", clock=vclock),
        pytest.raises(HangDetected, match="fault_targets:aanswer"),
    ):
        vclock.run(main())


def test_the_benchmark_harness_times_every_row() -> None:
    from tests.bench import faults as bench  # noqa: PLC0415 - only this test needs it

    report = bench.measure(rounds=1, target_ms=1.0)
    assert set(report.ns) == {
        "bare",
        "decide()",
        "wrapped, future @n",
        "wrapped, spent",
        "parse 20 entries",
    }
    assert all(0 < ns < float("inf") for ns in report.ns.values())
    assert "goal <=10x" in bench.format_report(report)
    assert len(faults.parse(bench.SPEC_20)) == 20
    _assert_restored()
