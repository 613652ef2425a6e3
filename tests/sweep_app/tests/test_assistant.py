"""The assistant's promise: whatever the model does, an answer, never an exception."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chat import Assistant


def test_answers(assistant: Assistant) -> None:
    reply = assistant.answer("Once upon a time")
    assert reply.text
    assert reply.kind in ("model", "busy", "too long", "sorry")


def test_streams(assistant: Assistant) -> None:
    reply = assistant.stream("Once upon a time")
    assert reply.text
    assert reply.kind in ("model", "busy", "sorry")
