"""Write the corpus of malformed fault journals: ``python tests/corpus/make_journals.py``.

Each file is a valid journal (a header and a dozen events of several kinds) with one thing
wrong on one line, or a whole file that is wrong (empty, not UTF-8). ``journals/expected.json``
says, for each file, the line ``faults.journal.load`` must name and a few words its message
must hold. ``tests/corpus/test_journal_corpus.py`` runs every file through
``pytest --replay-journal`` and checks the generator still writes exactly these files.

The files are generated once and checked in; the generation is deterministic (one seeded
``random.Random``), so running this again rewrites the same bytes. The same mutations,
drawn from a ``random.Random`` that hypothesis controls, make the malformed journals of
``tests/property/test_journal_malformed.py`` (:func:`malformed`).
"""

from __future__ import annotations

import json
import random
import sys
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if __package__ in (None, ""):  # run as a script: import the packages from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pytest_resilience.core.events import event_type

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    Mutation = Callable[[list[dict[str, Any]], random.Random], "Mutated"]

HERE: Final = Path(__file__).resolve().parent
FOLDER: Final = HERE / "journals"
EXPECTED: Final = FOLDER / "expected.json"
SEED: Final = 20_240_526

SPEC: Final = "llama.generate=30%timeout->none;daemon.stream=@2stall(after=1);llama.chat=2*oom"
#: The sites of SPEC and the faults each may record (the term without its conditions).
SITES: Final = {
    "llama.generate": ("timeout", "none"),
    "daemon.stream": ("stall(after=1)",),
    "llama.chat": ("oom",),
}


@dataclass(frozen=True, slots=True)
class Case:
    """A malformed journal: its bytes, the line its error names, words its message holds."""

    name: str
    data: bytes
    line: int
    says: str


# ------------------------------------------------------------------------------ the base


def header(**changes: Any) -> dict[str, Any]:
    data = {"kind": "faults.run", "version": 1, "spec": SPEC, "seed": 7, "scope": "test_x"}
    return data | changes


def fired(site: str, fault: str, call: int, time: float) -> dict[str, Any]:
    return {
        "kind": "fault.injected",
        "time": time,
        "source": "faults",
        "site": site,
        "fault": fault,
        "call": call,
    }


def base(rng: random.Random) -> list[dict[str, Any]]:
    """A valid journal: the header, then faults fired and what the policies made of them."""
    lines = [header(seed=rng.choice([7, 0, "ci-run", 2**40]))]
    time = 0.0
    calls = dict.fromkeys(SITES, 0)
    for _ in range(rng.randint(3, 5)):
        site = rng.choice(list(SITES))
        calls[site] += rng.randint(1, 3)
        time += rng.choice([0.0, 0.5, 1.25])
        lines.append(fired(site, rng.choice(SITES[site]), calls[site], time))
    others: list[dict[str, Any]] = [
        {"kind": "attempt.failed", "time": 1.0, "source": "retry", "attempt": 1,
         "error": "TimeoutError: slow", "category": "timeout"},
        {"kind": "retry.scheduled", "time": 1.0, "source": "retry", "attempt": 2, "delay": 0.5},
        {"kind": "breaker.transition", "time": 2.0, "source": "breaker", "from_state": "closed",
         "to_state": "open", "reason": "5 failures"},
        {"kind": "fallback.used", "time": 2.5, "source": "chain", "step": "cache", "index": 1,
         "after": ["model: TimeoutError"]},
        {"kind": "fallback.exhausted", "time": 3.0, "source": "chain",
         "failures": ["model: TimeoutError", "cache: KeyError"]},
        {"kind": "health.checked", "time": 3.5, "source": "monitor", "check": "daemon",
         "healthy": False, "message": "refused"},
        {"kind": "daemon.up", "time": 4.0, "source": "daemon", "latency": 0.25},
        {"kind": "scenario.step", "time": 4.5, "source": "scenario", "index": 2, "op": "chat",
         "detail": "héllo ✓"},
        {"kind": "stream.stalled", "time": 5.0, "source": "guard", "which": "idle",
         "waited": 30.0, "partial": "the answer is"},
        {"kind": "checkpoint.saved", "time": 5.5, "source": "job", "key": "k", "step": 3},
    ]  # fmt: skip
    rng.shuffle(others)
    for event in others[: rng.randint(6, len(others))]:
        lines.insert(rng.randint(1, len(lines)), event)
    return lines


def text_of(lines: Sequence[dict[str, Any] | str]) -> list[str]:
    return [x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines]


def encode(lines: list[str], rng: random.Random) -> bytes:
    ending = rng.choice(["\n", "\n", "\r\n"])
    return "".join(line + ending for line in lines).encode()


def an_event_line(lines: list[dict[str, Any]], rng: random.Random, kind: str = "") -> int:
    """The index (from 0) of a random event line, of ``kind`` if given."""
    choices = [i for i, x in enumerate(lines) if i and (not kind or x["kind"] == kind)]
    return rng.choice(choices)


# ------------------------------------------------------------------------- the mutations
#
# Each takes a fresh valid base and the generator, and returns (lines, 1-based line of the
# error, words of the message), or bytes for the whole file with the line and words.

Mutated = tuple[list[str] | bytes, int, str]

WRONG: Final[dict[str, list[Any]]] = {
    "int": [None, True, "3", 1.5, [], {}, [1]],
    "float": [None, False, "0.5", [], {"a": 1}, 10**400],
    "str": [None, True, 3, 0.5, [], {}, ["x"]],
    "bool": [None, 0, 1, "true", [], {}],
    "tuple": [None, "a: b", [1], [None], {}, 3],
}
NOT_UTF8: Final = [
    b"\xff", b"\xfe", b"\x80", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xe2\x82\x28",
    b"\xf0\x28\x8c\xbc", b"\xf0\x90\x28\xbc", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\xa1\xa1\xa1",
    b"\xe9", b"\xf5\x80\x80\x80", b"caf\xe9", b"\xe2\x82",
]  # fmt: skip


def type_name(kind: str, field: str) -> str:
    hint = typing.get_type_hints(event_type(kind))[field]
    return "tuple" if typing.get_origin(hint) is tuple else str(hint.__name__)


def required(kind: str) -> set[str]:
    cls = event_type(kind)
    return {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}


def not_utf8(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    text = text_of(lines)
    i = rng.randrange(len(text))
    raw = [line.encode() for line in text]
    cut = raw[i].rfind(b'"', 0, len(raw[i]) - 1)  # inside the last string of the line
    bad = rng.choice(NOT_UTF8)
    raw[i] = raw[i][:cut] + bad + raw[i][cut:] if cut > 0 else bad + raw[i]
    return b"".join(x + b"\n" for x in raw), i + 1, "not UTF-8"


def deep(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    text = text_of(lines)
    depth = rng.choice([2_500, 4_000])  # well past the recursion limit (1000)
    opener = rng.choice(["[", '{"a": ', '[{"b": '])
    nested = opener * depth
    i = rng.randrange(len(text))
    if i == 0 or rng.random() < 0.5:
        text[i] = nested + "1"  # unclosed: the parser gives up on depth first
    else:
        data = lines[i] | {rng.choice(list(lines[i])[1:]): "@@"}
        text[i] = json.dumps(data).replace('"@@"', nested + "1")
    return text, i + 1, "JSON nested too deep"


def not_json(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    text = text_of(lines)
    i = rng.randrange(len(text))
    line = text[i]
    how = rng.randrange(7)
    if how == 0:
        text[i] = line[: rng.randrange(1, len(line) - 1)]  # truncated
    elif how == 1:
        text[i] = line.replace('"', "'")
    elif how == 2:
        text[i] = line[:-1] + ", }"
    elif how == 3:
        text[i] = line + " " + line
    elif how == 4:
        text[i] = line.replace(": ", " ", 1)
    elif how == 5:
        text[i] = "// " + line
    else:
        text[i] = line.replace('"', "", 2)
    return text, i + 1, ""


def not_object(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    text = text_of(lines)
    i = rng.randrange(len(text))
    text[i] = rng.choice(["[]", "1", '"faults.run"', "null", "true", f"[{text[i]}]", "-0.5"])
    return text, i + 1, "expected a JSON object"


HEADERS: Final[list[tuple[dict[str, Any], str]]] = [
    ({"kind": "fault.run"}, "the first line must be the header"),
    ({"kind": None}, "the first line must be the header"),
    ({"kind": "fault.injected"}, "the first line must be the header"),
    ({"version": 2}, "unsupported journal version 2"),
    ({"version": 0}, "unsupported journal version 0"),
    ({"version": "1"}, "unsupported journal version '1'"),
    ({"version": True}, "unsupported journal version true"),
    ({"version": 1.0}, "unsupported journal version 1.0"),
    ({"version": None}, "unsupported journal version null"),
    ({"spec": None}, "the header's spec must be a str"),
    ({"spec": ["llama.generate=none"]}, "the header's spec must be a str"),
    ({"spec": "llama.generat=none"}, "unknown site"),
    ({"spec": "llama.generate="}, "the header's spec"),
    ({"spec": "llama.generate=timeout("}, "the header's spec"),
    ({"spec": "llama.generate=none;llama.generate=oom"}, "the header's spec"),
    ({"spec": "llama.generate=stall(after=1)"}, "does not admit"),
    ({"spec": "daemon.stream=200%none"}, "the header's spec"),
    ({"spec": "nonsense"}, "the header's spec"),
    ({"seed": None}, "the header's seed must be an int or a str"),
    ({"seed": True}, "the header's seed must be an int or a str"),
    ({"seed": 1.5}, "the header's seed must be an int or a str"),
    ({"seed": [7]}, "the header's seed must be an int or a str"),
    ({"seed": "\ud800"}, "the header's seed is not text"),
    ({"scope": 3}, "the header's scope must be a str"),
    ({"scope": None}, "the header's scope must be a str"),
    ({"scope": "\udcff"}, "the header's scope is not text"),
    ({"route": "wire"}, "the header has no field(s) 'route'"),
    ({"Spec": SPEC}, "the header has no field(s) 'Spec'"),
]


def bad_header(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    changes, says = rng.choice(HEADERS)
    text = [json.dumps(lines[0] | changes), *text_of(lines[1:])]
    return text, 1, says


def header_dropped(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    del lines[0]
    return text_of(lines), 1, "the first line must be the header"


def second_header(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    i = rng.randint(1, len(lines))
    lines.insert(i, header())
    return text_of(lines), i + 1, "a second header"


def bad_kind(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    i = an_event_line(lines, rng)
    kind = rng.choice(["fault.injectd", "event", "", "FAULT.INJECTED", 3, None, ["daemon.up"]])
    event = dict(lines[i])
    if kind is None and rng.random() < 0.5:
        del event["kind"]
    else:
        event["kind"] = kind
    lines[i] = event
    says = "the event has no kind" if event.get("kind") is None else "unknown event kind"
    return text_of(lines), i + 1, says


def bad_field(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    i = an_event_line(lines, rng)
    event = dict(lines[i])
    field = rng.choice([k for k in event if k != "kind"])
    how = rng.randrange(3)
    if how == 0:  # a wrong type
        event[field] = rng.choice(WRONG[type_name(event["kind"], field)])
        says = f"{field} must be"
    elif how == 1 and field in required(event["kind"]):  # a required field left out
        del event[field]
        says = "lacks the field(s)"
    else:  # a field the event does not have
        event[rng.choice(["extra", "Time", "sourc", "call_number"])] = 1
        says = "has no field(s)"
    lines[i] = event
    return text_of(lines), i + 1, says


def bad_call(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    i = an_event_line(lines, rng, "fault.injected")
    call: object = rng.choice([0, -1, -2, -(10**9), None, 1.5, 2.0, "3", True, False, [], {}])
    lines[i] = lines[i] | {"call": call}
    zero = isinstance(call, int) and not isinstance(call, bool)
    return text_of(lines), i + 1, "call numbers count from 1" if zero else "call must be"


FAULTS: Final[list[tuple[str, str, str]]] = [
    ("llama.generate", "timeout(", ""),
    ("llama.generate", "tiemout", "unknown"),
    ("llama.generate", "none->timeout", "is not one term"),
    ("llama.generate", "30%timeout", "has firing conditions"),
    ("llama.generate", "2*none", "has firing conditions"),
    ("llama.generate", "@3none", "has firing conditions"),
    ("llama.generate", "@3+none", "has firing conditions"),
    ("llama.generate", "off", "never fires"),
    ("llama.generate", "none;llama.chat=oom", "is not one term"),
    ("llama.generate", "", ""),
    ("llama.generate", "stall(after=1)", "does not admit"),
    ("llama.generate", "refuse", "does not admit"),
    ("llama.chat", "oom(", ""),
    ("daemon.stream", "stall(after=-1)", ""),
    ("daemon.stream", "stall(after=1, x=2)", ""),
    ("llama.generat", "none", "unknown site"),
    ("", "none", ""),
    ("llama.generate=none", "none", ""),
    ("py:", "none", ""),
    ("py:os:", "none", ""),
]


def bad_fault(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    i = an_event_line(lines, rng, "fault.injected")
    site, fault, says = rng.choice(FAULTS)
    lines[i] = lines[i] | {"site": site, "fault": fault}
    return text_of(lines), i + 1, says


def repeated_call(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    i = an_event_line(lines, rng, "fault.injected")
    again = dict(lines[i]) | {"time": lines[i]["time"] + 1}
    if rng.random() < 0.5:
        again["fault"] = rng.choice(SITES[again["site"]])
    j = rng.randint(i + 1, len(lines))
    lines.insert(j, again)
    return text_of(lines), j + 1, "already fired on line"


def repeated_key(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    text = text_of(lines)
    i = rng.randrange(len(text))
    key = rng.choice(list(lines[i]))
    value = json.dumps(lines[i][key])
    text[i] = text[i][:-1] + f', "{key}": {value}}}'
    return text, i + 1, "appears twice in one object"


def huge_number(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    text = text_of(lines)
    i = an_event_line(lines, rng)
    digits = "9" * rng.choice([4_301, 5_000, 8_000])  # int() reads at most 4300 digits
    text[i] = text[i][:-1] + f', "big": {digits}}}'
    return text, i + 1, "integer string conversion"


def control_character(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    text = text_of(lines)
    i = rng.randrange(len(text))
    cut = text[i].rfind('"', 0, len(text[i]) - 1)
    bad = rng.choice(["\x00", "\x07", "\x1b[2J", "\t", "\x7f\x1f"])
    text[i] = text[i][:cut] + bad + text[i][cut:]
    return text, i + 1, "Invalid control character"


def empty(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    data = rng.choice([b"", b"\n", b"\n\n  \n", b"\xef\xbb\xbf", b"\r\n\t\r\n", b"\xef\xbb\xbf\n"])
    return data, 1, "empty: no header line"


def other_encoding(lines: list[dict[str, Any]], rng: random.Random) -> Mutated:
    """The journal saved in another encoding: UTF-16/32 (line 1 is already wrong), or a
    single-byte code page (wrong from the first line that is not ASCII)."""
    encoding = rng.choice(["utf-16", "utf-16-le", "utf-32", "cp1252", "latin-1"])
    event = {"kind": "daemon.down", "time": 9.0, "source": "daemon", "reason": "café fermé"}
    lines.insert(rng.randint(1, len(lines)), event)
    text = text_of(lines)
    data = "".join(line + "\n" for line in text).encode(encoding, errors="replace")
    if encoding.startswith("utf-"):
        return data, 1, ""
    return data, next(i for i, x in enumerate(text, 1) if not x.isascii()), "not UTF-8"


#: name -> (mutation, how many corpus files it makes)
MUTATIONS: Final[dict[str, tuple[Mutation, int]]] = {
    "not-utf8": (not_utf8, 20),
    "other-encoding": (other_encoding, 6),
    "deep": (deep, 12),
    "not-json": (not_json, 20),
    "not-object": (not_object, 10),
    "bad-header": (bad_header, 34),
    "no-header": (header_dropped, 5),
    "second-header": (second_header, 6),
    "bad-kind": (bad_kind, 14),
    "bad-field": (bad_field, 40),
    "bad-call": (bad_call, 20),
    "bad-fault": (bad_fault, 26),
    "repeated-call": (repeated_call, 10),
    "repeated-key": (repeated_key, 8),
    "huge-number": (huge_number, 3),
    "control-character": (control_character, 6),
    "empty": (empty, 6),
}


def malformed(rng: random.Random, mutation: str | None = None) -> Case:
    """One malformed journal, drawn from ``rng`` (a random mutation unless one is named)."""
    name = mutation if mutation is not None else rng.choice(sorted(MUTATIONS))
    change = MUTATIONS[name][0]
    result, line, says = change(base(rng), rng)
    data = result if isinstance(result, bytes) else encode(result, rng)
    return Case(name, data, line, says)


def corpus() -> list[Case]:
    """Every file of the corpus, named ``<mutation>-<nn>.jsonl``."""
    rng = random.Random(SEED)
    cases = []
    for name, (_, count) in MUTATIONS.items():
        for n in range(1, count + 1):
            case = malformed(rng, name)
            cases.append(Case(f"{name}-{n:02d}.jsonl", case.data, case.line, case.says))
    return cases


def expected(cases: list[Case]) -> str:
    table = {c.name: {"line": c.line, "says": c.says} for c in cases}
    return json.dumps(table, indent=1, sort_keys=True, ensure_ascii=True) + "\n"


def main() -> None:
    cases = corpus()
    FOLDER.mkdir(exist_ok=True)
    for old in FOLDER.glob("*.jsonl"):
        old.unlink()
    for case in cases:
        (FOLDER / case.name).write_bytes(case.data)
    EXPECTED.write_text(expected(cases), encoding="utf-8")
    size = sum(len(c.data) for c in cases)
    print(f"wrote {len(cases)} journals ({size} bytes) and {EXPECTED.name} to {FOLDER}")


if __name__ == "__main__":
    main()
