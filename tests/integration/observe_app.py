"""A small application, as a user writes one: it asks a model service through tenacity's
retries and, when they are spent, answers with a canned text. Its only tie to
pytest-resilience is the marker on the canned answer (a no-op outside a test)."""

from __future__ import annotations

import tenacity

from pytest_resilience.core.app import fallback_point, fell_back

CANNED = "The assistant is resting; try again in a minute."


def _request(prompt: str) -> str:
    return f"answer to {prompt}"  # stands for the call to the model server


@tenacity.retry(
    retry=tenacity.retry_if_exception_type((ConnectionError, TimeoutError)),
    stop=tenacity.stop_after_attempt(3),
    wait=tenacity.wait_exponential(multiplier=0.5),
    reraise=True,
)
def ask(prompt: str) -> str:
    return _request(prompt)


@fallback_point("canned")
def canned(prompt: str) -> str:
    return CANNED


def answer(prompt: str) -> str:
    """The model's answer, or the canned one once the retries are spent."""
    try:
        return ask(prompt)
    except (ConnectionError, TimeoutError):
        return canned(prompt)


def answer_inline(prompt: str) -> str:
    """The same, marking the fallback with a call instead of the decorator."""
    try:
        return ask(prompt)
    except (ConnectionError, TimeoutError) as exc:
        fell_back("canned", after=exc, source="answer_inline")
        return CANNED
