"""Write the corpus of malformed scenario files: ``python tests/corpus/make_scenarios.py``.

Each file is a valid scenario (a llama target, a retry, two or three steps, an ``[expect]``
table; multi-line strings, multi-line arrays, ``\"\"\"`` inside one-line strings and inline
tables drawn at random) with one thing wrong on one line, or a whole file that is wrong
(empty, UTF-16). ``scenarios/expected.json`` says, for each file, the line and the key
``faults.scenario.load`` must name and a few words its message must hold.
``tests/corpus/scenarios/test_scenario_corpus.py`` runs every file through ``pytest`` and
``python -m faults.scenario`` and checks the generator still writes exactly these files.

The files are generated once and checked in; the generation is deterministic (one seeded
``random.Random``), so running this again rewrites the same bytes. The same mutations,
drawn from a ``random.Random`` that hypothesis controls, make the malformed scenarios of
``tests/unit/test_scenario_parse.py`` (:func:`malformed`).

No file names a module that exists: loading one imports nothing (a ``callable`` or
``factory`` target is imported when a scenario is loaded).
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    Lines = list[tuple[str, str]]  # (the text of a line, the key it belongs to, dotted)
    Mutated = tuple["Lines | bytes", int, str, str]  # what, line, key, words of the message
    Mutation = Callable[[Lines, random.Random], Mutated]

HERE: Final = Path(__file__).resolve().parent
FOLDER: Final = HERE / "scenarios"
EXPECTED: Final = FOLDER / "expected.json"
SEED: Final = 20_250_611

#: What the caps of faults.scenario are (checked against it by the corpus test).
MAX_REPEAT: Final = 10_000
MAX_ATTEMPTS: Final = 100
MAX_PARTS: Final = 1_000
MAX_DEPTH: Final = 32


@dataclass(frozen=True, slots=True)
class Case:
    """A malformed scenario: its bytes, the line and key its error names, words it holds."""

    name: str
    data: bytes
    line: int
    key: str
    says: str


# ------------------------------------------------------------------------------ the base

SPECS: Final = (
    "llama.generate=2*none",
    "llama.generate=30%none",
    "llama.stream=@1stall(after=2)",
    "llama.generate=1*timeout;llama.stream=@2stall(after=1)",
)
TITLES: Final = (
    '"two empty answers are retried"',
    '\'it said """ and left\'',  # a """ inside a one-line string: not a multi-line string
    '"quotes \\"\\"\\" escaped"',
    '"""a title, triple quoted"""',
    "'''a literal title, triple quoted'''",
    '"héllo ✓ wörld"',
)


def base(rng: random.Random) -> Lines:
    """A valid scenario, as lines with the dotted key each belongs to ("" for none)."""
    out: Lines = []

    def add(text: str = "", key: str = "") -> None:
        out.append((text, key))

    if rng.random() < 0.5:
        add("# Demonstrates: a base of the corpus; each file breaks it once")
    add("version = 1", "version")
    add(f"title = {rng.choice(TITLES)}", "title")
    add(f"seed = {rng.choice([0, 1, 7, 1234, 2**32])}", "seed")
    if rng.random() < 0.5:
        add('clock = "virtual"  # waits cost nothing', "clock")
    add()
    add("[target]", "target")
    add('client = "llama"', "target.client")
    add('model = "tiny"', "target.model")
    add(f"max_tokens = {rng.choice([4, 8, 16])}", "target.max_tokens")
    add()
    add("[faults]", "faults")
    add(f'spec = "{rng.choice(SPECS)}"', "faults.spec")
    add()
    add("[resilience.retry]", "resilience.retry")
    add(f"attempts = {rng.randint(2, 5)}", "resilience.retry.attempts")
    add("base = 0.5", "resilience.retry.base")
    on = "resilience.retry.on"
    if rng.random() < 0.5:
        add("on = [", on)
        add('  "InvalidOutput",', on)
        add('  "TimeoutError",  # a comment, ] and all', on)
        add("]", on)
    else:
        add('on = ["InvalidOutput", "TimeoutError"]', on)
    if rng.random() < 0.5:
        add()
        add("[resilience.breaker]", "resilience.breaker")
        add("failures = 3", "resilience.breaker.failures")
        add("recovery = 10.0", "resilience.breaker.recovery")
    step = 0

    def steps(op: str) -> str:
        nonlocal step
        step += 1
        add()
        add("[[steps]]", f"steps[{step}]")
        add(f'op = "{op}"', f"steps[{step}].op")
        return f"steps[{step}]"

    at = steps("generate")
    if rng.random() < 0.5:
        add('prompt = """', f"{at}.prompt")
        add("a prompt over lines, with key = 1 in it", f"{at}.prompt")
        add("[and a table] that is not one", f"{at}.prompt")
        add('"""', f"{at}.prompt")
    else:
        add('prompt = "Tell me a story"', f"{at}.prompt")
    add(f"repeat = {rng.randint(1, 4)}", f"{at}.repeat")
    if rng.random() < 0.5:
        at = steps("advance")
        add("seconds = 5", f"{at}.seconds")
    at = steps("stream")
    add('prompt = \'it said """ and went on\'', f"{at}.prompt")
    add("resilience = { retry = { attempts = 2 } }", f"{at}.resilience")
    add()
    add("[expect]", "expect")
    add("success_rate = 1.0", "expect.success_rate")
    add(f"faults_injected = {rng.randint(0, 3)}", "expect.faults_injected")
    if rng.random() < 0.5:
        add('transitions.model = ["closed->open"]', "expect.transitions.model")
    add('leaks = "none"', "expect.leaks")
    return out


def encode(lines: Lines | list[str], rng: random.Random) -> bytes:
    ending = rng.choice(["\n", "\n", "\r\n"])
    texts = [x if isinstance(x, str) else x[0] for x in lines]
    return "".join(text + ending for text in texts).encode()


def where(lines: Lines, rng: random.Random, test: Callable[[str, str], bool]) -> int:
    """The index (from 0) of a random line for which ``test(text, key)`` holds."""
    return rng.choice([i for i, (text, key) in enumerate(lines) if test(text, key)])


def value_line(lines: Lines, rng: random.Random, *keys: str) -> int:
    """The index of a random ``key = value`` line of one of ``keys``."""
    return where(lines, rng, lambda text, key: key in keys and "=" in text and text[0] != " ")


def replace_value(lines: Lines, i: int, value: str) -> None:
    text, key = lines[i]
    lines[i] = (f"{text.split('=', 1)[0].rstrip()} = {value}", key)


def insert_after(lines: Lines, key: str, text: str, new_key: str) -> int:
    """Insert a line after the (last) line of ``key``, a header or a key; its index."""
    i = max(i for i, (_, k) in enumerate(lines) if k == key) + 1
    lines.insert(i, (text, new_key))
    return i


def step_keys(lines: Lines) -> list[str]:
    return [key for text, key in lines if text == "[[steps]]"]


# ------------------------------------------------------------------------- the mutations
#
# Each takes a fresh valid base and the generator, and returns (lines, 1-based line of the
# error, the dotted key it names, words of the message), or bytes for the whole file.

NOT_UTF8: Final = [
    b"\xff", b"\xfe", b"\x80", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xe2\x82\x28",
    b"\xf0\x28\x8c\xbc", b"\xf0\x90\x28\xbc", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\xa1\xa1\xa1",
    b"\xe9", b"\xf5\x80\x80\x80", b"caf\xe9",
]  # fmt: skip


def not_utf8(lines: Lines, rng: random.Random) -> Mutated:
    """A byte that is not UTF-8 in a string, one-line or multi-line."""
    i = where(
        lines, rng, lambda text, key: '"' in text or (key.endswith("prompt") and "=" not in text)
    )
    raw = [text.encode() for text, _ in lines]
    cut = raw[i].rfind(b'"')
    cut = cut if cut > 0 else len(raw[i])
    raw[i] = raw[i][:cut] + rng.choice(NOT_UTF8) + raw[i][cut:]
    return b"".join(x + b"\n" for x in raw), i + 1, lines[i][1], "the file is not UTF-8"


def other_encoding(lines: Lines, rng: random.Random) -> Mutated:
    """The file saved as UTF-16 or UTF-32 (line 1 is wrong), or in a single-byte code page
    (wrong from the first line that is not ASCII)."""
    i = value_line(lines, rng, "title")
    lines[i] = ('title = "café fermé"', "title")
    encoding = rng.choice(["utf-16", "utf-32", "cp1252", "latin-1"])
    data = "".join(text + "\n" for text, _ in lines).encode(encoding)
    if encoding.startswith("utf-"):
        return data, 1, "", "it looks like UTF-16 or UTF-32"
    first = next(n for n, (text, _) in enumerate(lines) if not text.isascii())
    return data, first + 1, lines[first][1], "the file is not UTF-8"


def deep(lines: Lines, rng: random.Random) -> Mutated:
    """Arrays or inline tables nested past the limit (tomllib would recurse out), or a dotted
    key as deep; in a step, or at the top."""
    depth = rng.choice([MAX_DEPTH + 1, MAX_DEPTH + 8, 500, 2_000])
    how = rng.randrange(4)
    if how == 0:
        value = "[" * depth + "1" + "]" * depth
    elif how == 1:
        value = "{ a = " * depth + "1" + " }" * depth
    elif how == 2:
        value = "[{ b = " * (depth // 2 + 1) + "1"  # unclosed: the depth is found first
    else:
        value = ""
    if rng.random() < 0.5:
        at = rng.choice(step_keys(lines))
        name = rng.choice(["args", "kwargs"])
        text = f"{name}.{'.'.join(['x'] * depth)} = 1" if how == 3 else f"{name} = {value}"
        i = insert_after(lines, at, text, f"{at}.{name}")
        return lines, i + 1, f"{at}.{name}", "nested too deep"
    text = f"junk.{'.'.join(['x'] * depth)} = 1" if how == 3 else f"junk = {value}"
    lines.insert(0, (text, "junk"))
    return lines, 1, "junk", "nested too deep"


def huge_number(lines: Lines, rng: random.Random) -> Mutated:
    i = value_line(lines, rng, "seed", "version", "target.max_tokens", "steps[1].repeat")
    replace_value(lines, i, "9" * rng.choice([4_301, 5_000, 8_000]))
    return lines, i + 1, lines[i][1], "an integer of more than 4300 digits"


def not_toml(lines: Lines, rng: random.Random) -> Mutated:
    """A line that is not TOML."""
    how = rng.randrange(9)
    if how == 0:
        i = value_line(lines, rng, "seed", "target.max_tokens", "steps[1].repeat", "version")
        lines[i] = (lines[i][0].replace("=", "= =", 1), lines[i][1])
        return lines, i + 1, lines[i][1], "Invalid value"
    if how == 1:
        i = value_line(lines, rng, "target.client", "target.model", "faults.spec")
        lines[i] = (lines[i][0].rstrip('"'), lines[i][1])
        return lines, i + 1, lines[i][1], "Illegal character"
    if how == 2:
        i = where(lines, rng, lambda text, key: text in ("[target]", "[faults]", "[expect]"))
        lines[i] = (lines[i][0][:-1], "")
        return lines, i + 1, "", "Expected ']' at the end of a table declaration"
    if how == 3:
        i = value_line(lines, rng, "seed", "version", "target.model")
        lines.insert(i + 1, lines[i])
        return lines, i + 2, lines[i][1], "Cannot overwrite a value"
    if how == 4:
        i = value_line(lines, rng, "seed", "target.max_tokens", "resilience.retry.attempts")
        lines[i] = (lines[i][0] + " 4", lines[i][1])
        return lines, i + 1, lines[i][1], "Expected newline or end of document"
    if how == 5:
        i = insert_after(lines, "target", "max tokens = 8", "")
        return lines, i + 1, "", "Expected '=' after a key"
    if how == 6:
        i = value_line(lines, rng, "target.model", "faults.spec", "target.client")
        bad = rng.choice(["\x00", "\x07", "\x1b", "\x7f", "\x1f"])
        lines[i] = (lines[i][0][:-1] + bad + '"', lines[i][1])
        return lines, i + 1, lines[i][1], "Illegal character"
    if how == 7:
        i = where(lines, rng, lambda text, key: text in ("[target]", "[faults]", "[expect]"))
        lines.append((lines[i][0], lines[i][1]))
        return lines, len(lines), lines[i][1], "twice"
    i = where(lines, rng, lambda text, key: '"InvalidOutput"' in text)
    lines[i] = (
        lines[i][0].replace('"InvalidOutput"', '"InvalidOutput" "TimeoutError"'),
        lines[i][1],
    )
    return lines, i + 1, lines[i][1], "Unclosed array"


def _misspelt(name: str, rng: random.Random) -> str:
    if len(name) >= 4:
        i = rng.randrange(1, len(name) - 2)
        swapped = name[:i] + name[i + 1] + name[i] + name[i + 2 :]
        if swapped != name:
            return swapped
    return name + rng.choice(["x", "s", "_"])


def unknown_key(lines: Lines, rng: random.Random) -> Mutated:
    """A misspelt key, table or expectation."""
    i = where(
        lines,
        rng,
        lambda text, key: "=" in text and text.split("=")[0].strip() == key.rpartition(".")[2],
    )
    text, key = lines[i]
    name = text.split("=", 1)[0].strip()
    wrong = _misspelt(name, rng)
    lines[i] = (text.replace(name, wrong, 1), key)
    return lines, i + 1, key.rpartition(name)[0] + wrong, "unknown key"


def unknown_table(lines: Lines, rng: random.Random) -> Mutated:
    i = where(lines, rng, lambda text, key: text in ("[target]", "[faults]", "[expect]"))
    wrong = _misspelt(lines[i][0][1:-1], rng)
    lines[i] = (f"[{wrong}]", wrong)
    return lines, i + 1, wrong, "unknown key"


WRONG_TYPES: Final = [
    ("steps[1].repeat", ['"3"', "1.5", "true", "[3]", "{ n = 3 }"], "expected an integer"),
    ("seed", ['"1"', "1.0", "false", "[]"], "expected an integer"),
    ("title", ["3", "true", '["a title"]', "{ text = 'x' }"], "expected one line of printable"),
    ("target.model", ["3", '["tiny"]', "false"], "expected one line of printable text"),
    ("resilience.retry.attempts", ['"3"', "3.0", "true"], "expected an integer"),
    ("resilience.retry.base", ['"0.5"', "true", "nan", "inf"], "expected a number >= 0"),
    ("expect.success_rate", ['"1"', "true", "[1.0]"], "expected a number from 0 to 1"),
    ("expect.leaks", ["false", "0", '"some"'], "expected one of 'none'"),
    ("faults.spec", ["1", "true", '["llama.generate=none"]'], "expected a string"),
]


def wrong_type(lines: Lines, rng: random.Random) -> Mutated:
    key, values, says = rng.choice(WRONG_TYPES)
    i = value_line(lines, rng, key)
    replace_value(lines, i, rng.choice(values))
    return lines, i + 1, key, says


OUT_OF_RANGE: Final[list[tuple[str, list[float], str]]] = [
    ("steps[1].repeat", [MAX_REPEAT + 1, 10**6, 10**18, 2**80], "over the cap of 10000"),
    ("steps[1].repeat", [0, -1, -(10**9)], "expected an integer from 1 to 10000"),
    ("resilience.retry.attempts", [MAX_ATTEMPTS + 1, 10**9, 2**64], "over the cap of 100"),
    ("resilience.retry.attempts", [0, -3], "expected an integer from 1 to 100"),
    ("seed", [-1, -1234, 2**64, 2**70], "expected an integer from 0 to 2**64 - 1"),
    ("expect.success_rate", [1.5, -0.1, 2], "expected a number from 0 to 1"),
    ("expect.faults_injected", [-1, -100], "expected an integer >= 0"),
    ("target.max_tokens", [0, -8], "expected an integer >= 1"),
    ("version", [2, 0, -1, 10**12], "unknown version"),
]


def out_of_range(lines: Lines, rng: random.Random) -> Mutated:
    key, values, says = rng.choice(OUT_OF_RANGE)
    i = value_line(lines, rng, key)
    replace_value(lines, i, str(rng.choice(values)))
    return lines, i + 1, key, says


def over_a_cap_in_a_table(lines: Lines, rng: random.Random) -> Mutated:
    """A cap broken where the key is: a step's inline retry, or a job's parts."""
    if rng.random() < 0.5:
        i = where(lines, rng, lambda text, key: text.startswith("resilience = {"))
        n = rng.choice([MAX_ATTEMPTS + 1, 5_000])
        lines[i] = (f"resilience = {{ retry = {{ attempts = {n} }} }}", lines[i][1])
        return lines, i + 1, f"{lines[i][1]}.retry.attempts", "over the cap of 100"
    i = insert_after(lines, "resilience.retry.on", "", "")
    parts = rng.choice([MAX_PARTS + 1, 10**7])
    lines[i + 1 : i + 1] = [
        ("[resilience.checkpoint]", "resilience.checkpoint"),
        (f"parts = {parts}", "resilience.checkpoint.parts"),
    ]
    return lines, i + 3, "resilience.checkpoint.parts", "over the cap of 1000"


CHOICES: Final = [
    ("clock", '"virtul"', "did you mean 'virtual'?"),
    ("clock", '"wall"', "expected one of 'virtual', 'real'"),
    ("target.client", '"lama"', "did you mean 'llama'?"),
    ("target.client", '"openai"', "expected one of 'llama', 'daemon', 'resilient'"),
    ("steps[1].op", '"generat"', "did you mean 'generate'?"),
    ("steps[1].op", '"sleep"', "expected one of 'generate'"),
    ("expect.leaks", '"nothing"', "expected one of 'none'"),
]


def bad_choice(lines: Lines, rng: random.Random) -> Mutated:
    key, value, says = rng.choice(CHOICES)
    if key == "clock" and not any(k == "clock" for _, k in lines):
        insert_after(lines, "seed", 'clock = "virtual"', "clock")
    i = value_line(lines, rng, key)
    replace_value(lines, i, value)
    return lines, i + 1, key, says


def missing(lines: Lines, rng: random.Random) -> Mutated:
    """A required key left out: version, title, a step's op, or every step."""
    how = rng.randrange(4)
    if how < 2:
        key = ["version", "title"][how]
        lines[:] = [x for x in lines if x[1] != key]
        return lines, 1, key, "required key missing in the file"
    if how == 2:
        at = rng.choice(step_keys(lines))
        lines[:] = [x for x in lines if x[1] != f"{at}.op"]
        header = next(i for i, (_, k) in enumerate(lines) if k == at)
        return lines, header + 1, f"{at}.op", f"required key missing in [{at}]"
    lines[:] = [x for x in lines if not x[1].startswith("steps")]
    return lines, 1, "steps", "required key missing in the file"


BAD_SPECS: Final = [
    ("llama.generate=2*nne", "unknown fault kind 'nne'"),
    ("llama.generat=none", "unknown site"),
    ("llama.generate=", "bad fault spec"),
    ("llama.generate=timeout(", "bad fault spec"),
    ("llama.generate=none;llama.generate=oom", "bad fault spec"),
    ("llama.generate=200%none", "bad fault spec"),
    ("nonsense", "bad fault spec"),
    ("llama.generate=stall(after=1)", "bad fault spec"),
    ("daemon.stream=@2lost(after=3)", "daemon sites need a daemon target, not 'llama'"),
]


def bad_spec(lines: Lines, rng: random.Random) -> Mutated:
    spec, says = rng.choice(BAD_SPECS)
    i = value_line(lines, rng, "faults.spec")
    replace_value(lines, i, f'"{spec}"')
    return lines, i + 1, "faults.spec", says


BAD_NAMES: Final = [
    (".x.Err", "has an empty part"),
    ("x..Err", "has an empty part"),
    ("Err.", "has an empty part"),
    ("myapp.errors.", "has an empty part"),
    ("1x.Err", "'1x' is not a Python identifier"),
    ("myapp.class.Err", "'class' is not a Python identifier"),
    ("my-app.Err", "'my-app' is not a Python identifier"),
    ("my app.Err", "'my app' is not a Python identifier"),
    ("InvalidOutpt", "did you mean 'InvalidOutput'?"),
    ("ConectionError", "did you mean 'ConnectionError'?"),
    ("", "unknown exception type ''"),
]


def bad_exception_name(lines: Lines, rng: random.Random) -> Mutated:
    """A name in an ``on`` list or in ``[target] errors`` that is not well formed (refused
    without importing anything)."""
    name, says = rng.choice(BAD_NAMES)
    quoted = json.dumps(name)
    if rng.random() < 0.3:
        i = insert_after(lines, "target.model", f'errors = ["InvalidOutput", {quoted}]', "")
        return lines, i + 1, "target.errors", says
    multi = [i for i, (text, _) in enumerate(lines) if text.startswith('  "TimeoutError"')]
    if multi and rng.random() < 0.7:  # the second element of a multi-line array
        i = multi[0]
        lines[i] = (f"  {quoted},", lines[i][1])
        return lines, i + 1, "resilience.retry.on", says
    i = value_line(lines, rng, "resilience.retry.on")
    if lines[i][0].endswith("["):
        lines[i] = (f"on = [{quoted},", lines[i][1])
    else:
        replace_value(lines, i, f'["InvalidOutput", {quoted}]')
    return lines, i + 1, "resilience.retry.on", says


def unprintable(lines: Lines, rng: random.Random) -> Mutated:
    """Control characters where a terminal would show them: in the title, a breaker's name, a
    model name (TOML escapes, valid TOML), and in a key (shown escaped in the message)."""
    escape = rng.choice(["\\u001b[31m", "\\u001b[2J", "\\n", "\\t", "\\u0007", "\\u009b"])
    how = rng.randrange(4)
    if how == 0:
        i = value_line(lines, rng, "title")
        replace_value(lines, i, f'"a title {escape}red"')
        return lines, i + 1, "title", "expected one line of printable text"
    if how == 1:
        i = value_line(lines, rng, "title")
        replace_value(lines, i, rng.choice(['""', '"   "']))
        return lines, i + 1, "title", "expected one line of printable text"
    if how == 2:
        i = value_line(lines, rng, "target.model")
        replace_value(lines, i, f'"tiny{escape}"')
        return lines, i + 1, "target.model", "expected one line of printable text"
    i = insert_after(lines, "expect", f'"evil{escape}" = 1', "")
    shown = escape.replace("\\u001b", "\\x1b").replace("\\u0007", "\\x07")
    shown = shown.replace("\\u009b", "\\x9b")
    return lines, i + 1, f"expect.evil{shown}", "unknown key"


def after_quotes(lines: Lines, rng: random.Random) -> Mutated:
    """A one-line string holding \"\"\" (or ''') early in the file, an error further down:
    the line must still be right."""
    i = value_line(lines, rng, "title")
    lines[i] = (
        rng.choice(['title = \'a """ b\'', "title = \"a ''' b\"", 'title = \'x"""\'']),
        "title",
    )
    j = value_line(lines, rng, "expect.success_rate", "expect.leaks", "expect.faults_injected")
    text, key = lines[j]
    name = text.split("=", 1)[0].strip()
    lines[j] = (text.replace(name, name + "s", 1), key)
    return lines, j + 1, key + "s", "unknown key"


def semantic(lines: Lines, rng: random.Random) -> Mutated:
    """Valid values that do not fit together."""
    how = rng.randrange(9)
    last = step_keys(lines)[-1]
    n = int(last[6:-1]) + 1
    if how == 0:
        lines += [("[[steps]]", f"steps[{n}]"), ('op = "kill_daemon"', f"steps[{n}].op")]
        return lines, len(lines), f"steps[{n}].op", "kill_daemon needs a daemon target"
    if how == 1:
        lines += [("[[steps]]", f"steps[{n}]"), ('op = "advance"', f"steps[{n}].op")]
        return lines, len(lines), f"steps[{n}].op", "advance needs seconds > 0"
    if how == 2:
        lines += [("[[steps]]", f"steps[{n}]"), ('op = "job"', f"steps[{n}].op")]
        return lines, len(lines), f"steps[{n}].op", "job needs a [resilience.checkpoint] table"
    if how == 3:
        lines += [("[[steps]]", f"steps[{n}]"), ('op = "call"', f"steps[{n}].op")]
        return lines, len(lines), f"steps[{n}].op", "call needs a callable target"
    if how == 4:
        i = insert_after(lines, f"{last}.op", "args = [1, 2]", f"{last}.args")
        return lines, i + 1, f"{last}.args", "args is for op = 'call'"
    if how == 5:
        i = insert_after(lines, "target.model", 'route = "wire"', "target.route")
        return lines, i + 1, "target.route", "route = 'wire'"
    if how == 6:
        i = insert_after(lines, "steps[1].op", "resilience = { breaker = { failures = 2 } }", "")
        return lines, i + 1, "steps[1].resilience.breaker", "expected one of: retry, stream"
    if how == 7:
        i = insert_after(lines, "target.model", 'daemon_url = "http://127.0.0.1:9"', "")
        return lines, i + 1, "target.daemon_url", "daemon_url names your own server"
    i = insert_after(lines, "resilience.retry.on", "", "")
    lines[i + 1 : i + 1] = [
        ("[resilience.checkpoint]", "resilience.checkpoint"),
        ("parts = 2", "resilience.checkpoint.parts"),
        ("killed_after = 2", "resilience.checkpoint.killed_after"),
    ]
    return lines, i + 4, "resilience.checkpoint.killed_after", "killed_after must be less"


BAD_TARGETS: Final = [
    ("nocolon", "expected 'module:callable'"),
    ("no_such_module_for_the_corpus.answer", "did you mean"),
    (".relative:answer", "it has an empty part"),
    ("app..chat:answer", "it has an empty part"),
    ("app.chat:", "expected 'module:callable'"),
    (":answer", "expected 'module:callable'"),
    ("1app:answer", "'1app', which is not a Python identifier"),
    ("app:an-swer", "'an-swer', which is not a Python identifier"),
    ("app.class:answer", "'class', which is not a Python identifier"),
]


def bad_target(lines: Lines, rng: random.Random) -> Mutated:
    """A callable or factory path that is not well formed (refused before any import)."""
    path, says = rng.choice(BAD_TARGETS)
    i = value_line(lines, rng, "target.client")
    kind = rng.choice(["callable", "factory"])
    lines[i] = (f'{kind} = "{path}"', f"target.{kind}")
    if kind == "callable":  # a model key on a callable is refused first: take them out
        lines[:] = [x for x in lines if x[1] not in ("target.model", "target.max_tokens")]
        i = next(n for n, (_, k) in enumerate(lines) if k == "target.callable")
    return lines, i + 1, f"target.{kind}", says


def steps_shape(lines: Lines, rng: random.Random) -> Mutated:
    """``steps`` that are not an array of tables."""
    lines[:] = [x for x in lines if not x[1].startswith("steps")]
    value, says = rng.choice(
        [
            ("3", "expected an array of tables ([[steps]]), got an integer"),
            ("[]", "needs at least one entry"),
            ("[1, 2]", "expected an array of tables ([[steps]])"),
            ('"generate"', "expected an array of tables ([[steps]]), got a string"),
        ]
    )
    i = next(n for n, (_, k) in enumerate(lines) if k == "seed") + 1
    lines.insert(i, (f"steps = {value}", "steps"))
    return lines, i + 1, "steps", says


def empty(lines: Lines, rng: random.Random) -> Mutated:
    data = rng.choice([b"", b"\n", b"\n\n  \n", b"\xef\xbb\xbf", b"# only a comment\n", b"\r\n"])
    return data, 1, "steps", "required key missing in the file"


#: name -> (mutation, how many corpus files it makes)
MUTATIONS: Final[dict[str, tuple[Mutation, int]]] = {
    "not-utf8": (not_utf8, 20),
    "other-encoding": (other_encoding, 8),
    "deep": (deep, 20),
    "huge-number": (huge_number, 6),
    "not-toml": (not_toml, 30),
    "unknown-key": (unknown_key, 20),
    "unknown-table": (unknown_table, 6),
    "wrong-type": (wrong_type, 24),
    "out-of-range": (out_of_range, 30),
    "over-a-cap": (over_a_cap_in_a_table, 8),
    "bad-choice": (bad_choice, 10),
    "missing": (missing, 10),
    "bad-spec": (bad_spec, 12),
    "bad-exception-name": (bad_exception_name, 22),
    "unprintable": (unprintable, 16),
    "after-quotes": (after_quotes, 8),
    "semantic": (semantic, 18),
    "bad-target": (bad_target, 12),
    "steps-shape": (steps_shape, 6),
    "empty": (empty, 6),
}


def malformed(rng: random.Random, mutation: str | None = None) -> Case:
    """One malformed scenario, drawn from ``rng`` (a random mutation unless one is named)."""
    name = mutation if mutation is not None else rng.choice(sorted(MUTATIONS))
    change = MUTATIONS[name][0]
    result, line, key, says = change(base(rng), rng)
    data = result if isinstance(result, bytes) else encode(result, rng)
    return Case(name, data, line, key, says)


def corpus() -> list[Case]:
    """Every file of the corpus, named ``<mutation>-<nn>.toml``."""
    rng = random.Random(SEED)
    cases = []
    for name, (_, count) in MUTATIONS.items():
        for n in range(1, count + 1):
            case = malformed(rng, name)
            cases.append(Case(f"{name}-{n:02d}.toml", case.data, case.line, case.key, case.says))
    return cases


def expected(cases: list[Case]) -> str:
    table = {c.name: {"line": c.line, "key": c.key, "says": c.says} for c in cases}
    return json.dumps(table, indent=1, sort_keys=True, ensure_ascii=True) + "\n"


def main() -> None:
    cases = corpus()
    FOLDER.mkdir(exist_ok=True)
    for old in FOLDER.glob("*.toml"):
        old.unlink()
    for case in cases:
        (FOLDER / case.name).write_bytes(case.data)
    EXPECTED.write_text(expected(cases), encoding="utf-8")
    size = sum(len(c.data) for c in cases)
    print(f"wrote {len(cases)} scenarios ({size} bytes) and {EXPECTED.name} to {FOLDER}")


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: nothing of the checkout is imported
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
