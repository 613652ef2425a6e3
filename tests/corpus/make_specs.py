"""Write the corpus of malformed fault specs: ``python tests/corpus/make_specs.py``.

Each spec is a valid one (one to three entries of one to three terms, written with or
without whitespace and line breaks) with one thing wrong in one place. ``specs/malformed.txt``
holds them, one a line: the mutation's name, the 0-based column that the ``SpecError`` of
``faults.parse`` must point at, a few words its message must hold, and the spec (escaped:
see :func:`escape`). ``tests/corpus/specs/test_spec_corpus.py`` gives every spec to
``faults.parse`` and to ``pytest --inject-faults``, and checks that the generator still
writes exactly this file.

The column of each mutation is worked out from where the mutation put the mistake, never by
asking the parser. The file is generated once and checked in; the generation is
deterministic (one seeded ``random.Random``), so running this again rewrites the same bytes.
The same mutations, drawn from a ``random.Random`` that hypothesis controls, make the
malformed specs of ``tests/property/test_fault_spec_properties.py`` (:func:`malformed`).
"""

from __future__ import annotations

import functools
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if __package__ in (None, ""):  # run as a script: import the packages from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from faults.kinds import KINDS, PY, SITES, kinds_for

if TYPE_CHECKING:
    from collections.abc import Callable

    Mutation = Callable[["Base", random.Random], "Mutated"]

HERE: Final = Path(__file__).resolve().parent
FOLDER: Final = HERE / "specs"
CORPUS: Final = FOLDER / "malformed.txt"
SEED: Final = 20_240_626

HEADER: Final = (
    "# Malformed fault specs, written by tests/corpus/make_specs.py (do not edit: run it).\n"
    "# name <TAB> column of the error <TAB> words of its message <TAB> the spec, with\n"
    "# backslash, tab, line breaks and unprintable characters escaped as in Python.\n"
)


@dataclass(frozen=True, slots=True)
class Case:
    """A malformed spec: its text, the column its error names, words its message holds."""

    name: str
    text: str
    column: int
    says: str


# ------------------------------------------------------------------------------ the base

PY_SITES: Final = ("py:myapp.llm:Client.ask", "py:app:answer", "py:pkg.mod:Reader.lines")
ALL_SITES: Final = (*SITES, *PY_SITES)

#: Valid ways to write each kind's arguments (None: no parentheses at all).
ARGS: Final[dict[str, tuple[str | None, ...]]] = {
    "off": (None,),
    "none": (None, ""),
    "raise": (
        "ValueError",
        'ConnectionError, "boom"',
        "DaemonLost",
        "type=TimeoutError",
        "json.JSONDecodeError,'bad \\'json\\''",
        "Cancelled",
    ),
    "timeout": (None, "30s", "forever", "duration=2m", " 500ms "),
    "latency": ("500ms", "1s, 200ms", "duration=2s, jitter=1s", "0.5s"),
    "oom": (None,),
    "crash": (None, "after=2"),
    "stall": (None, "after=3", "2, for=5s", "for=forever"),
    "truncate": ("after=2", "4"),
    "corrupt": (None,),
    "nan": (None,),
    "lost": (None, "after=1"),
    "refuse": (None,),
    "pause": ("5s", "forever"),
    "ratelimit": (None, "retry_after=20s"),
    "status": ("503", "500, retry_after=1s"),
    "restart": (None,),
    "overflow": (None,),
    "error": (None, "after=2", "3"),
}
PREFIXES: Final = ("", "", "", "2*", "30%", "@2", "@3+", "50%1*", "1*@2", "12.5%", "3*@1+")


def key_of(site: str) -> str:
    return PY if site.startswith("py:") else site


def call(kind: str, args: str | None) -> str:
    return kind if args is None else f"{kind}({args})"


def a_term(rng: random.Random, site: str) -> str:
    kind = rng.choice(kinds_for(key_of(site)))
    return rng.choice(PREFIXES) + call(kind, rng.choice(ARGS[kind]))


class Base:
    """A valid spec, kept in parts so that a mutation knows where its mistake goes."""

    def __init__(self, rng: random.Random) -> None:
        sites = rng.sample(ALL_SITES, rng.randint(1, 3))
        self.entries = [(s, [a_term(rng, s) for _ in range(rng.randint(1, 3))]) for s in sites]
        self.sep = rng.choice([";", ";", "; ", " ; ", ";\n"])
        self.arrow = rng.choice(["->", "->", " -> ", "->\n  "])
        self.eq = rng.choice(["=", "=", " = "])

    def entry(self, site: str, terms: list[str]) -> str:
        return site + self.eq + self.arrow.join(terms)

    def before(self, i: int) -> str:
        """The text before entry ``i``, with its separator."""
        return "".join(self.entry(*e) + self.sep for e in self.entries[:i])

    def after(self, i: int) -> str:
        """The text after entry ``i``, from its separator."""
        return "".join(self.sep + self.entry(*e) for e in self.entries[i + 1 :])

    @property
    def text(self) -> str:
        return self.sep.join(self.entry(*e) for e in self.entries)

    def pick(self, rng: random.Random, want: Callable[[str], bool] = bool) -> tuple[int, int]:
        """An (entry, term) whose site passes ``want`` (any, if none does)."""
        places = [(i, j) for i, (s, ts) in enumerate(self.entries) for j in range(len(ts))]
        fitting = [p for p in places if want(self.entries[p[0]][0])]
        return rng.choice(fitting or places)

    def with_term(self, i: int, j: int, bad: str, offset: int) -> tuple[str, int]:
        """The spec with term ``j`` of entry ``i`` written as ``bad``, and the column of
        ``bad[offset]`` in it."""
        site, terms = self.entries[i]
        head = self.before(i) + site + self.eq + "".join(t + self.arrow for t in terms[:j])
        tail = "".join(self.arrow + t for t in terms[j + 1 :]) + self.after(i)
        return head + bad + tail, len(head) + offset

    def alone(self, i: int, site: str) -> tuple[int, int]:
        """Entry ``i`` made ``site`` with one term (no site of the base fits a mutation)."""
        self.entries[i] = (site, ["off"])
        return i, 0

    def last(self) -> tuple[int, int]:
        """The last term of the last entry (a mistake there ends the text)."""
        return len(self.entries) - 1, len(self.entries[-1][1]) - 1

    def cut_after(self, i: int, j: int) -> str:
        """The spec up to the end of term ``j`` of entry ``i``."""
        site, terms = self.entries[i]
        return self.before(i) + site + self.eq + self.arrow.join(terms[: j + 1])


def skip_ws(text: str, at: int) -> int:
    """The first column from ``at`` that is not whitespace (the grammar skips it)."""
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def admits(site: str, kind: str) -> bool:
    return KINDS[kind].admits(key_of(site))


def typo(rng: random.Random, word: str, invalid: Callable[[str], bool]) -> str:
    """``word`` with one letter dropped, doubled, swapped or changed, such that ``invalid``."""
    for _ in range(100):
        i = rng.randrange(len(word))
        how = rng.randrange(4)
        if how == 0:
            out = word[:i] + word[i + 1 :]
        elif how == 1:
            out = word[:i] + word[i] + word[i:]
        elif how == 2 and i + 1 < len(word):
            out = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        else:
            out = word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[i + 1 :]
        if out and invalid(out) and out[0] not in "._" and not out.startswith("py:"):
            return out
    raise AssertionError(f"no typo of {word!r} found")  # pragma: no cover


# ------------------------------------------------------------------------- the mutations
#
# Each takes a fresh valid base and the generator, and returns (text, column, words).

Mutated = tuple[str, int, str]


def unknown_site(b: Base, rng: random.Random) -> Mutated:
    i, _ = b.pick(rng, lambda s: not s.startswith("py:"))
    site, terms = b.entries[i]
    if site.startswith("py:"):  # only py: sites in this base: use a built-in one instead
        site = rng.choice(list(SITES))
    bad = typo(rng, site, lambda w: w not in SITES and all(c.isalnum() or c in "._" for c in w))
    text = b.before(i) + b.entry(bad, terms) + b.after(i)
    return text, len(b.before(i)), "unknown site"


def unknown_kind(b: Base, rng: random.Random) -> Mutated:
    i, j = b.pick(rng)
    site = b.entries[i][0]
    kind = rng.choice(kinds_for(key_of(site)))
    bad = typo(rng, kind, lambda w: w not in KINDS and w.isalpha())
    prefix = rng.choice(PREFIXES)
    text, column = b.with_term(i, j, prefix + call(bad, rng.choice(ARGS[kind])), len(prefix))
    return text, column, f"unknown fault kind {bad!r}"


def not_admitted(b: Base, rng: random.Random) -> Mutated:
    i, j = b.pick(rng, lambda s: s != "py:" and len(kinds_for(key_of(s))) < len(KINDS))
    site = b.entries[i][0]
    kind = rng.choice([k for k in KINDS if not admits(site, k)])
    prefix = rng.choice(PREFIXES)
    text, column = b.with_term(i, j, prefix + call(kind, rng.choice(ARGS[kind])), len(prefix))
    return text, column, f"does not admit {kind!r}"


def no_equals(b: Base, rng: random.Random) -> Mutated:
    i, _ = b.pick(rng)
    site, terms = b.entries[i]
    junk = rng.choice([" ", "-", "#", "/", "!", "~", ",", ")", "(", "+", "|", " : "])
    entry = site + junk + b.arrow.join(terms)
    text = b.before(i) + entry + b.after(i)
    return text, len(b.before(i)) + len(site), "expected '=' after the site"


def bad_prefix(b: Base, rng: random.Random) -> Mutated:
    """pct%, count* and @n that are out of range or out of order, at a term's start."""
    i, j = b.pick(rng)
    site = b.entries[i][0]
    kind = rng.choice(kinds_for(key_of(site)))
    body = call(kind, rng.choice(ARGS[kind]))
    prefix, offset, says = rng.choice(
        [
            ("101%", 0, "is over 100%"),
            ("150%", 0, "is over 100%"),
            ("100.5%", 0, "is over 100%"),
            ("9999 %", 0, "is over 100%"),
            ("0*", 0, "a count must be at least 1"),
            ("2.5*", 0, "a count must be a whole number"),
            ("30%0*", 3, "a count must be at least 1"),
            ("30% 1.5 *", 4, "a count must be a whole number"),
            ("2000000000*", 0, "a count must be at most 1000000000"),
            ("@0", 1, "call numbers start at 1"),
            ("@ 0", 2, "call numbers start at 1"),
            ("@", 1, "expected a call number after '@'"),
            ("@-1", 1, "expected a call number after '@'"),
            ("@+", 1, "expected a call number after '@'"),
            ("@2000000000", 1, "a call number must be at most 1000000000"),
            ("@1.5", 2, "expected a fault kind"),
            ("@2 30%", 3, "pct% and count* come before @n"),
            ("@3+2*", 3, "pct% and count* come before @n"),
            ("1*50%", 2, "pct% and count* come before @n"),
            ("3", 1, "expected '%' or '*' after '3'"),
            ("12 ", 3, "expected '%' or '*' after '12'"),
            ("30%2", 4, "expected '*' after the count 2"),
            ("50%%", 3, "expected a fault kind"),
            ("2**", 2, "expected a fault kind"),
            ("9" * 16 + "*", 0, "number too large"),
            ("@" + "9" * 20, 1, "number too large"),
            ("1" + "0" * 15 + "%", 0, "number too large"),
        ]
    )
    text, column = b.with_term(i, j, prefix + body, offset)
    return text, column, says


def bad_duration(b: Base, rng: random.Random) -> Mutated:
    """A duration without its unit, with a unit the grammar does not know, or too long."""
    timed = ("timeout", "latency", "pause")
    i, j = b.pick(rng, lambda s: any(admits(s, k) for k in timed))
    if not any(admits(b.entries[i][0], k) for k in timed):
        i, j = b.alone(i, "llama.generate")  # no site of this base waits: one that does
    kind = rng.choice([k for k in timed if admits(b.entries[i][0], k)])
    head = f"{kind}("
    number = rng.choice(["30", "5", "0.5", "120", "1"])
    how = rng.randrange(3)
    if how == 0:
        bad, offset, says = f"{head}{number})", len(head) + len(number), "needs a unit"
    elif how == 1:
        unit = rng.choice(["sec", "x", "ns", "us", "d", "min", "H", "S", "mss", "hours"])
        bad = f"{head}{number}{unit})"
        offset, says = len(head) + len(number), f"bad duration '{number}{unit}'"
    else:
        huge = rng.choice(["99999999999h", "2000000000s", "20000000m"])
        bad, offset, says = f"{head}{huge})", len(head), "is too long"
    text, column = b.with_term(i, j, bad, offset)
    return text, column, says


def unclosed(b: Base, rng: random.Random) -> Mutated:
    """The last term's arguments run to the end of the text."""
    i, j = b.last()
    site = b.entries[i][0]
    # every site admits a kind with arguments
    options = [(k, a) for k in kinds_for(key_of(site)) for a in ARGS[k] if a and a.strip()]
    kind, args = rng.choice(options)
    if rng.random() < 0.3:
        bad, says = f"{kind}({args},", "expected a value"
    else:
        bad, says = f"{kind}({args.rstrip()}", "unclosed '('"
    text, _ = b.with_term(i, j, bad, 0)
    return text, len(text), says


def stray_paren(b: Base, rng: random.Random) -> Mutated:
    i, j = b.pick(rng)
    cut = b.cut_after(i, j)
    rest = b.text[len(cut) :]
    if rng.random() < 0.5:
        return cut + ")" + rest, len(cut), "unbalanced ')'"
    site = b.entries[i][0]
    kind = rng.choice([k for k in kinds_for(key_of(site)) if KINDS[k].params] or ["off"])
    bad = f"{kind}(("
    text, column = b.with_term(i, j, bad + "30s))", len(bad) - 1)
    return text, column, "expected a value"


def trailing(b: Base, rng: random.Random) -> Mutated:
    """A separator, or the start of one, at the end."""
    text = b.text
    end, offset, says = rng.choice(
        [
            (";", 1, "expected a site"),
            (" ;", 2, "expected a site"),
            (";;", 1, "expected a site"),
            (";=", 1, "expected a site"),
            (";\n;", 2, "expected a site"),
            ("->", 2, "expected a fault kind after '->'"),
            (" ->", 3, "expected a fault kind after '->'"),
            ("->;", 2, "expected a fault kind after '->'"),
            ("->->", 2, "expected a fault kind after '->'"),
            ("=", 0, "expected ';' or '->' after the term"),
            ("-", 0, "expected ';' or '->' after the term"),
            ("- >", 0, "expected ';' or '->' after the term"),
        ]
    )
    return text + end, len(text) + offset, says


def empty_chain(b: Base, rng: random.Random) -> Mutated:
    i, _ = b.pick(rng)
    site, terms = b.entries[i]
    head = b.before(i) + site + b.eq
    if rng.random() < 0.5:
        text = (head + b.after(i)).rstrip()  # site= and then the next entry, or the end
    else:
        text = head + b.arrow + b.arrow.join(terms) + b.after(i)  # site=->term
    return text, skip_ws(text, min(len(head), len(text))), "expected a fault kind after '='"


def duplicate_site(b: Base, rng: random.Random) -> Mutated:
    i, _ = b.pick(rng)
    site = b.entries[i][0]
    k = rng.randint(i + 1, len(b.entries))  # the copy goes after the original
    copy = (site, [a_term(rng, site) for _ in range(rng.randint(1, 2))])
    b.entries.insert(k, copy)
    column = skip_ws(b.text, len(b.before(k)))
    return b.text, column, f"site {site!r} is given twice"


def _not_a_parameter(names: list[str], word: str) -> bool:
    return word not in names and word.isidentifier()


def bad_argument(b: Base, rng: random.Random) -> Mutated:
    """An argument the kind does not take, too many, one given twice, or out of order."""
    i, j = b.pick(rng)
    site = b.entries[i][0]
    kinds = kinds_for(key_of(site))
    options: list[tuple[str, str, int, str]] = []  # (kind, inside the parentheses, col, says)
    for kind in kinds:
        info = KINDS[kind]
        names = [p.name for p in info.params]
        if not names:
            options.append((kind, "1", 0, f"{kind} takes no arguments"))
            options.append((kind, "x=1", 0, f"{kind}() has no argument 'x'"))
            continue
        wrong = typo(rng, names[0], functools.partial(_not_a_parameter, names))
        options.append((kind, f"{wrong}=1", 0, f"{kind}() has no argument {wrong!r}"))
        first = {
            "type": "ValueError",
            "duration": "1s",
            "after": "1",
            "for": "1s",
            "code": "503",
            "retry_after": "1s",
            "message": '"m"',
            "jitter": "1s",
        }
        values = [first[n] for n in names]
        if not any(p.keyword for p in info.params):
            extra = ", ".join(values) + ", 1s"
            options.append(
                (kind, extra, extra.rindex("1s"), f"{kind} takes at most {len(names)} argument")
            )
        name, value = names[0], values[0]
        twice = f"{name}={value}, {name}={value}"
        options.append((kind, twice, twice.rindex(name), f"argument {name!r} is given twice"))
        if len(names) > 1 and not info.params[1].keyword:
            late = f"{name}={value}, {values[1]}"
            options.append(
                (kind, late, late.rindex(values[1]), "a positional argument after a keyword")
            )
    kind, inside, offset, says = rng.choice(options)
    head = f"{kind}("
    text, column = b.with_term(i, j, f"{head}{inside})", len(head) + offset)
    return text, column, says


def wrong_type(b: Base, rng: random.Random) -> Mutated:
    i, j = b.pick(rng)
    site = b.entries[i][0]
    options = [
        ("stall", "after=", "5s", "takes a whole number"),
        ("stall", "after=", "x", "takes a whole number"),
        ("stall", "after=", "2.5", "must be a whole number"),
        ("truncate", "", "'3'", "takes a whole number"),
        ("truncate", "after=", "1" + "0" * 10, "must be at most 1000000000"),
        ("lost", "after=", "forever", "takes a whole number"),
        ("raise", "", "3", "takes a name"),
        ("raise", "", "'ValueError'", "takes a name"),
        ("raise", "ValueError, ", "3", "takes a quoted string"),
        ("raise", "ValueError, ", "2s", "takes a quoted string"),
        ("status", "", "600", "needs an HTTP error status from 400 to 599"),
        ("status", "", "200", "needs an HTTP error status from 400 to 599"),
        ("status", "code=", "abc", "takes a whole number"),
        ("latency", "", "'1s'", "takes a duration"),
        ("latency", "", "forever", "takes a duration"),
        ("timeout", "", "soon", "takes a duration"),
        ("pause", "", "x1", "takes a duration"),
        ("ratelimit", "retry_after=", "never", "takes a duration"),
    ]
    fitting = [o for o in options if admits(site, o[0])]  # every site admits one
    kind, before, value, says = rng.choice(fitting)
    head = f"{kind}({before}"
    text, column = b.with_term(i, j, f"{head}{value})", len(head))
    return text, column, says


def no_value(b: Base, rng: random.Random) -> Mutated:
    i, j = b.pick(rng)
    site = b.entries[i][0]
    kind = rng.choice([k for k in kinds_for(key_of(site)) if KINDS[k].params] or ["off"])
    name = KINDS[kind].params[0].name if KINDS[kind].params else "x"
    inside, offset = rng.choice(
        [(f"{name}=", len(name) + 1), (f"{name}= ", len(name) + 2), (",", 0), (" ,1", 1)]
    )
    head = f"{kind}("
    text, column = b.with_term(i, j, f"{head}{inside})", len(head) + offset)
    return text, column, "expected a value"


def unterminated(b: Base, rng: random.Random) -> Mutated:
    """A string that is never closed: in the last term, so that no quote comes after it."""
    i, j = b.last()
    if not admits(b.entries[i][0], "raise"):
        b.entries.append(("py:unterminated:f", ["off"]))
        i, j = b.last()
    quote = rng.choice(["'", '"'])
    head = rng.choice(["raise(ValueError, ", "raise(type=OSError, message=", "raise(KeyError,"])
    body = rng.choice(["oops", "it\\'s", 'say \\"hi', "a\\\\", "", "x)"])
    text, column = b.with_term(i, j, head + quote + body, len(head))
    return text, column, f"the quote at column {column} is never closed"


# Names a typo of which is no exception `raise` takes (checked in typo()).
EXCEPTIONS: Final = ("ConnectionError", "TimeoutError", "ValueError", "RuntimeError",
                     "DaemonUnavailable", "DaemonLost", "ServerError", "RateLimited",
                     "MemoryError", "KeyError", "OSError")  # fmt: skip
REFUSED: Final = ("KeyboardInterrupt", "SystemExit", "GeneratorExit", "BaseException",
                  "BaseExceptionGroup", "ResilienceInterrupt")  # fmt: skip


def bad_exception(b: Base, rng: random.Random) -> Mutated:
    """An exception type that is not one, or one that raise() refuses (not an Exception)."""
    from faults.kinds import exception_names  # noqa: PLC0415 - what typos must avoid

    known = {n.lower() for n in (*exception_names(), *REFUSED)}
    i, j = b.pick(rng, lambda s: admits(s, "raise"))
    if not admits(b.entries[i][0], "raise"):
        i, j = b.alone(i, "py:bad.exception:f")
    if rng.random() < 0.4:
        name = rng.choice(REFUSED)
        says = f"raise() refuses {name}: it is a BaseException but not an Exception"
    else:
        name = typo(rng, rng.choice(EXCEPTIONS), lambda w: w.lower() not in known)
        says = f"unknown exception type {name!r}"
    head = rng.choice(["raise(", "raise(type=", "2*raise( ", "@1+raise("])
    tail = rng.choice([")", ', "boom")', ",'x')", ", message=m)"])
    text, column = b.with_term(i, j, head + name + tail, len(head))
    return text, column, says


#: Characters that cannot follow a term (nor start one): not whitespace, not part of a name,
#: not one of = - ( that could still make sense there.
STRAY: Final = ("#", "$", "!", "?", "&", "^", "~", "`", "|", "\\", "[", "]", "{", "}", "<",
                ">", "'", '"', ",", "/", "%", "*", "@", "+", "\x00", "\x1b", "\x7f",
                "\u200b", "\ufeff", "\u2192", "\u00bb", "\U0001f525")  # fmt: skip


def stray_character(b: Base, rng: random.Random) -> Mutated:
    """A character that cannot come next, right after a term."""
    i, j = b.pick(rng)
    cut = b.cut_after(i, j)
    c = rng.choice(STRAY)
    return cut + c + b.text[len(cut) :], len(cut), "expected ';' or '->' after the term"


def bad_start(b: Base, rng: random.Random) -> Mutated:
    c = rng.choice(["=", ";", "->", "#", "*", "%", "@", "(", ")", ",", "'", "\u200b", "?"])
    return c + b.text, 0, "expected a site"


def bad_py_site(b: Base, rng: random.Random) -> Mutated:
    i, _ = b.pick(rng)
    terms = b.entries[i][1]
    site, offset, says = rng.choice(
        [
            ("py:myapp.llm", 12, "a py: site is py:MODULE:QUALNAME"),
            ("py:app", 6, "a py: site is py:MODULE:QUALNAME"),
            ("py:", 3, "a py: site is py:MODULE:QUALNAME"),
            ("py:1app:f", 3, "bad module path"),
            ("py::f", 3, "bad module path"),
            ("py:app..llm:f", 7, "bad module path"),
            ("py:app.:f", 7, "bad module path"),
            ("py:app:", 7, "bad qualified name"),
            ("py:app:1f", 7, "bad qualified name"),
            ("py:app:Client..ask", 14, "bad qualified name"),
            ("py:app:f:g", 7, "bad qualified name"),
            ("py:my.app:Client.", 17, "bad qualified name"),
        ]
    )
    kind = rng.choice(kinds_for(PY))
    chain = [rng.choice(PREFIXES) + call(kind, rng.choice(ARGS[kind])), *terms[1:]]
    text = b.before(i) + b.entry(site, chain) + b.after(i)
    return text, len(b.before(i)) + offset, says


CYRILLIC: Final = str.maketrans({"o": "\u043e", "a": "\u0430", "e": "\u0435"})


def foreign_characters(b: Base, rng: random.Random) -> Mutated:
    """Letters and digits that are not ASCII, where a kind or a count is expected: they make
    a name, and no kind has it."""
    i, j = b.pick(rng)
    site = b.entries[i][0]
    kind = rng.choice(kinds_for(key_of(site)))
    prefix = rng.choice(PREFIXES)
    args = rng.choice(ARGS[kind])
    foreign = rng.choice(
        [
            "\u0663*" + call(kind, args),  # an Arabic-Indic 3 as a count
            "\uff13%" + call(kind, args),  # a fullwidth 3
            "".join(chr(0xFEE0 + ord(c)) for c in kind),  # the kind in fullwidth letters
            call(kind.translate(CYRILLIC), args),  # Cyrillic look-alikes of o, a, e
        ]
    )
    text, column = b.with_term(i, j, prefix + foreign, len(prefix))
    return text, column, "unknown fault kind"


#: name -> (mutation, how many corpus specs it makes)
MUTATIONS: Final[dict[str, tuple[Mutation, int]]] = {
    "unknown-site": (unknown_site, 16),
    "unknown-kind": (unknown_kind, 16),
    "not-admitted": (not_admitted, 14),
    "no-equals": (no_equals, 12),
    "bad-prefix": (bad_prefix, 30),
    "bad-duration": (bad_duration, 14),
    "unclosed": (unclosed, 12),
    "stray-paren": (stray_paren, 10),
    "trailing": (trailing, 10),
    "empty-chain": (empty_chain, 8),
    "duplicate-site": (duplicate_site, 10),
    "bad-argument": (bad_argument, 20),
    "wrong-type": (wrong_type, 18),
    "no-value": (no_value, 8),
    "unterminated": (unterminated, 10),
    "bad-exception": (bad_exception, 18),
    "stray-character": (stray_character, 20),
    "bad-start": (bad_start, 8),
    "bad-py-site": (bad_py_site, 14),
    "foreign-characters": (foreign_characters, 8),
}


def malformed(rng: random.Random, mutation: str | None = None) -> Case:
    """One malformed spec, drawn from ``rng`` (a random mutation unless one is named)."""
    name = mutation if mutation is not None else rng.choice(sorted(MUTATIONS))
    text, column, says = MUTATIONS[name][0](Base(rng), rng)
    # what pytest --inject-faults parses is the value stripped: keep the two the same
    assert text == text.strip(), text
    return Case(name, text, column, says)


def corpus() -> list[Case]:
    """Every spec of the corpus, named ``<mutation>-<nn>``."""
    rng = random.Random(SEED)
    cases = []
    for name, (_, count) in MUTATIONS.items():
        for n in range(1, count + 1):
            case = malformed(rng, name)
            cases.append(Case(f"{name}-{n:02d}", case.text, case.column, case.says))
    return cases


# ------------------------------------------------------------------------------ the file

_ESCAPES: Final = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ESCAPED: Final = re.compile(r"\\(\\|t|n|r|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def escape(text: str) -> str:
    """``text`` on one line: a backslash, tab and line breaks as ``\\\\ \\t \\n \\r``, any
    other unprintable character as ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``."""
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c.isprintable() and c != "\ufeff":
            out.append(c)
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out)


def unescape(line: str) -> str:
    """The text that :func:`escape` wrote as ``line``."""

    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        return {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}.get(code) or chr(int(code[1:], 16))

    return _ESCAPED.sub(one, line)


def write(cases: list[Case]) -> str:
    """The corpus file for ``cases``."""
    lines = [f"{c.name}\t{c.column}\t{c.says}\t{escape(c.text)}\n" for c in cases]
    return HEADER + "".join(lines)


def read(text: str) -> list[Case]:
    """The cases of a corpus file."""
    cases = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, column, says, spec = line.split("\t", 3)
            cases.append(Case(name, unescape(spec), int(column), says))
    return cases


def main() -> None:
    cases = corpus()
    FOLDER.mkdir(exist_ok=True)
    CORPUS.write_text(write(cases), encoding="utf-8", newline="\n")
    print(f"wrote {len(cases)} malformed specs to {CORPUS}")


if __name__ == "__main__":
    main()
