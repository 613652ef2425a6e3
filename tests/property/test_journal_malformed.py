"""Malformed journals, drawn by hypothesis, given to ``faults.journal.load``: each is refused
with a ``JournalFileError`` naming its line, and nothing else ever escapes.

``malformed_journals()`` applies the corpus' mutations (``tests/corpus/make_journals.py``)
with hypothesis choosing every random decision; the other properties put arbitrary JSON
values in the fields of a valid journal, and arbitrary bytes after its header.
"""

from __future__ import annotations

import io
import json
import re
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faults.journal import JournalFileError, Recording, load
from tests.corpus import make_journals

if TYPE_CHECKING:
    import random

    from tests.corpus.make_journals import Case

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POSITIONED = re.compile(r"journal: line (\d+): ")


def malformed_journals() -> st.SearchStrategy[Case]:
    """A valid journal with one thing wrong: the bytes, the line to name, words to say."""
    return st.builds(
        make_journals.malformed,
        st.randoms(use_true_random=False),
        st.sampled_from(sorted(make_journals.MUTATIONS)),
    )


def read(data: bytes) -> Recording | JournalFileError:
    """What ``load`` makes of a file holding ``data``: a recording, or the error it raised."""
    try:
        return load(io.BytesIO(data))
    except JournalFileError as exc:
        message = str(exc)
        assert POSITIONED.match(message), message
        assert message.isprintable(), message
        return exc


def line_of(error: JournalFileError) -> int:
    found = POSITIONED.match(str(error))
    assert found is not None
    return int(found.group(1))


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


# ------------------------------------------------------------------------------ properties


@given(malformed_journals())
@SETTINGS
def test_a_malformed_journal_is_refused_naming_its_line(case: Case) -> None:
    got = read(case.data)
    assert isinstance(got, JournalFileError), f"{case.name} was read: {case.data[:300]!r}"
    assert line_of(got) == case.line, (str(got), case.name)
    assert case.says in str(got)


@given(st.randoms(use_true_random=False), st.data())
@SETTINGS
def test_any_value_in_any_field_is_read_or_refused_at_its_line(
    rng: random.Random, data: st.DataObject
) -> None:
    lines = make_journals.base(rng)
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    record: dict[str, Any] = dict(lines[i])
    key = data.draw(st.sampled_from([*record, "extra"]), label="key")
    record[key] = data.draw(JSON, label="value")
    lines[i] = record
    read_or_refused_at(lines, i)


def read_or_refused_at(lines: list[dict[str, Any]], i: int) -> None:
    """The journal ``lines``, whose line ``i`` (0-based) was changed, is read, or refused at
    that line; or at a later line that repeats the call the changed line now fires, since a
    call is refused where it fires a second time (the loader reads the lines in order)."""
    got = read("".join(f"{json.dumps(x)}\n" for x in lines).encode())
    if isinstance(got, JournalFileError):
        if line_of(got) != i + 1:
            assert line_of(got) > i + 1, str(got)
            assert f"already fired on line {i + 1}" in str(got), str(got)
    else:
        assert len(got.events) == len(lines) - 1
        got.schedules()  # whatever was read replays


def test_a_call_changed_to_one_a_later_line_fires_is_refused_at_the_later_line() -> None:
    lines = [
        make_journals.header(),
        make_journals.fired("llama.chat", "oom", 2, 0.0),
        make_journals.fired("llama.generate", "none", 1, 0.5),
        make_journals.fired("llama.chat", "oom", 6, 1.0),
    ]
    lines[1] = lines[1] | {"call": 6}  # line 2 now fires the call line 4 fires
    read_or_refused_at(lines, 1)
    got = read("".join(f"{json.dumps(x)}\n" for x in lines).encode())
    assert str(got) == "journal: line 4: llama.chat call 6 already fired on line 2"


@given(st.lists(st.binary(max_size=40) | st.text(max_size=40).map(str.encode), max_size=4))
@SETTINGS
def test_arbitrary_bytes_after_a_header_are_read_or_refused(tail: list[bytes]) -> None:
    head = json.dumps(make_journals.header()).encode() + b"\n"
    got = read(head + b"\n".join(tail))
    if isinstance(got, JournalFileError):
        assert 2 <= line_of(got) <= 1 + sum(x.count(b"\n") + 1 for x in tail), str(got)


@given(st.binary(max_size=200))
@SETTINGS
def test_arbitrary_bytes_are_read_or_refused(data: bytes) -> None:
    read(data)
