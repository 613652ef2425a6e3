"""The effects of overflow and crash, in process: the overflow error's words and count, and
what a crash does before it aborts (hooks, flushing, its last words, no core file), with
``os.abort`` replaced so that the test's own process lives on."""

from __future__ import annotations

import os
import resource
import sys
from typing import TYPE_CHECKING

import pytest

from faults import effects
from faults.effects import context_overflow, crash, crash_message, on_crash, overflowing

if TYPE_CHECKING:
    from collections.abc import Iterator


class Aborted(Exception):
    pass


# ------------------------------------------------------------------------------ overflow


def test_the_overflow_error_is_llama_cpp_pythons_own() -> None:
    error = context_overflow(600, 512)
    assert type(error) is ValueError
    assert str(error) == "Requested tokens (600) exceed context window of 512"


@pytest.mark.parametrize(
    ("prompt_tokens", "n_ctx", "expected"),
    [
        (None, 512, 513),  # no count known: one more than the context holds
        (0, 512, 513),
        (-4, 512, 513),  # a nonsense count counts as none
        (5, 512, 517),  # a short prompt: the context plus the prompt
        (511, 512, 1023),
        (512, 512, 512),  # a prompt that overflows already keeps its own count
        (900, 512, 900),
    ],
)
def test_an_overflowing_count_always_exceeds_the_context(
    prompt_tokens: int | None, n_ctx: int, expected: int
) -> None:
    assert overflowing(prompt_tokens, n_ctx) == expected
    assert overflowing(prompt_tokens, n_ctx) >= n_ctx


# --------------------------------------------------------------------------------- crash


@pytest.fixture
def aborts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """``os.abort`` raises :class:`Aborted`, no other hook is installed; the core-file
    limit is put back afterwards."""
    calls: list[str] = []

    def abort() -> None:
        calls.append("abort")
        raise Aborted

    monkeypatch.setattr(os, "abort", abort)
    # without the plugin's own hook, which refuses a crash in the pytest process: here
    # os.abort only raises
    monkeypatch.setattr(effects, "_crash_hooks", [])
    limits = resource.getrlimit(resource.RLIMIT_CORE)
    yield calls
    resource.setrlimit(resource.RLIMIT_CORE, limits)


def test_a_crash_says_its_last_words_on_fd_2_then_aborts_without_a_core_file(
    aborts: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(Aborted):
        crash("llama.generate")
    assert aborts == ["abort"]
    assert capfd.readouterr().err == (
        "ggml/src/ggml.c:0: GGML_ASSERT(fault injected at llama.generate) failed\n"
    )
    assert crash_message("x") == "ggml/src/ggml.c:0: GGML_ASSERT(fault injected at x) failed\n"
    assert resource.getrlimit(resource.RLIMIT_CORE)[0] == 0


class Stream:
    def __init__(self, name: str, log: list[str], fails: bool = False) -> None:
        self.name, self.log, self.fails = name, log, fails

    def flush(self) -> None:
        self.log.append(f"flush {self.name}")
        if self.fails:
            raise ValueError("I/O operation on closed file")


def test_a_crash_runs_the_hooks_then_flushes_both_streams(
    aborts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[str] = []
    monkeypatch.setattr(sys, "stdout", Stream("stdout", log, fails=True))  # ignored
    monkeypatch.setattr(sys, "stderr", Stream("stderr", log))
    remove_first = on_crash(lambda site: log.append(f"first {site}"))
    remove_second = on_crash(lambda site: log.append(f"second {site}"))
    try:
        with pytest.raises(Aborted):
            crash("llama.stream")
    finally:
        remove_first()
        remove_second()
    assert log == ["first llama.stream", "second llama.stream", "flush stdout", "flush stderr"]
    assert aborts == ["abort"]


def test_a_hook_that_raises_stops_the_crash_and_the_hooks_after_it(aborts: list[str]) -> None:
    heard: list[str] = []

    def refuse(site: str) -> None:
        raise RuntimeError(f"not in this process: {site}")

    removers = [on_crash(refuse), on_crash(heard.append)]
    try:
        with pytest.raises(RuntimeError, match=r"not in this process: llama\.chat"):
            crash("llama.chat")
    finally:
        for remove in removers:
            remove()
    assert heard == []
    assert aborts == []


def test_a_removed_hook_is_not_called_and_removing_twice_is_harmless(aborts: list[str]) -> None:
    heard: list[str] = []
    remove = on_crash(heard.append)
    remove()
    remove()
    assert heard.append not in effects._crash_hooks
    with pytest.raises(Aborted):
        crash("llama.load")
    assert heard == []


def test_a_hook_may_remove_itself_while_the_hooks_run(aborts: list[str]) -> None:
    heard: list[str] = []

    def once(site: str) -> None:
        heard.append(f"once {site}")
        remove_once()

    remove_once = on_crash(once)
    remove_after = on_crash(lambda site: heard.append(f"after {site}"))
    try:
        with pytest.raises(Aborted):
            crash("llama.generate")
        with pytest.raises(Aborted):
            crash("llama.generate")
    finally:
        remove_after()
    assert heard == ["once llama.generate", "after llama.generate", "after llama.generate"]
