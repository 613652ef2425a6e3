"""The documentation's examples are real: every example in docs/*.md runs here.

Each page's fenced blocks are taken in order. An HTML comment on the line just before a
fence (invisible in the rendered page) says what to do with the block:

- no comment, a ``python`` block: executed; a page's blocks share one namespace (a fresh
  module), in a scratch folder that is also on ``sys.path``. They must not wait in real
  time: ``time.sleep`` fails the example (waits go through a ``VirtualClock``);
- ``<!-- real-time -->``: executed, and allowed to wait in real time (a real daemon);
- ``<!-- no-test -->``: not executed (the page says why);
- ``<!-- file: PATH -->``: written to PATH in the scratch folder (a module, a test file, a
  scenario), for later blocks;
- ``<!-- expect: passed=2 failed=1 exit=1 -->``, before a ``console`` block: its one
  ``$ pytest ...`` command runs (pytester, in process) in the scratch folder; the outcomes
  must be exactly these (unnamed ones 0) and each output line the block shows must appear,
  in order (``...`` stands for any text; a line of its own, for any lines);
- ``<!-- output -->``: the block shows what the python block before it prints, matched
  the same way.

Other blocks (console without ``expect``, toml or yaml without ``file``) are prose.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import pkgutil
import re
import shlex
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

import faults
import pytest_resilience
from faults.kinds import KINDS, PY, SITES, KindInfo, kinds_for
from faults.parser import parse
from faults.spec import SpecError
from pytest_resilience.core.classify import DEFAULT_RULES

DOCS = Path(__file__).resolve().parents[2] / "docs"
MKDOCS = DOCS.parent / "mkdocs.yml"
PAGES = sorted(p.name for p in DOCS.glob("*.md"))
# the README's example is real too; paths are relative to docs/
EXAMPLED = [*PAGES, "../README.md"]

# pytester puts sys.modules back as it was after each page: a module first imported by an
# example would be imported afresh by the next page, with new classes (httpx would no longer
# recognise httpcore's exceptions; httpx2 imports httpcore2 only when its first client is
# made) or failing outright (extension modules load once per process). So everything the
# examples import is imported here, once.
_PRELOAD = ("numpy", "gguf", "llama_cpp", "llama_cpp.server", "httpcore", "httpx", "tenacity",
            "stamina", "backoff", "freezegun", "httpcore2", "httpx2", "openai", "urllib3",
            "requests", "aiohttp", "ollama", "langchain_openai",
            # a worker pool pickles its worker function by reference: re-imported, it is
            # "not the same object" as the one the pool holds
            "concurrent.futures.process", "multiprocessing.pool")  # fmt: skip
for _name in _PRELOAD:
    if importlib.util.find_spec(_name.partition(".")[0]) is not None:
        importlib.import_module(_name)
for _package in (pytest_resilience, faults):
    for _info in pkgutil.walk_packages(_package.__path__, _package.__name__ + "."):
        importlib.import_module(_info.name)

_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*([\w-]+)\s*(?::\s*(.*?))?\s*-->\s*$")
_KNOWN = {"no-test", "real-time", "file", "expect", "output"}
_OUTCOMES = ("passed", "failed", "skipped", "errors", "xfailed", "xpassed")
_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nasyncio_mode = strict\n"


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced block of a page, with the directive written just before it."""

    page: str
    line: int  # of the opening fence, from 1
    lang: str
    code: str
    directive: str = ""
    argument: str = ""

    @property
    def where(self) -> str:
        return f"{os.path.normpath('docs/' + self.page)}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced blocks of ``page``. Raises ``ValueError`` for an unknown directive or an
    unclosed fence, so a typo cannot silently skip an example."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if i == len(lines):
            raise ValueError(f"docs/{page}:{start + 1}: unclosed code fence")
        directive = argument = ""
        previous = lines[start - 1].strip() if start else ""
        if previous.startswith("<!--"):
            match = _DIRECTIVE.match(previous)
            if match is None or match.group(1) not in _KNOWN:
                raise ValueError(f"docs/{page}:{start}: unknown directive {previous!r}")
            directive, argument = match.group(1), match.group(2) or ""
        code = "\n".join(lines[start + 1 : i]) + "\n"
        found.append(Block(page, start + 1, opening.group(1), code, directive, argument))
        i += 1
    return found


# --------------------------------------------------------------------------- running


class RealWait(AssertionError):
    pass


def _no_real_sleep(seconds: float) -> None:
    raise RealWait(
        f"this example called time.sleep({seconds!r}): examples wait on a VirtualClock "
        "(pass clock=...), or are marked <!-- real-time -->"
    )


def _expectations(block: Block) -> tuple[dict[str, int], int | None]:
    outcomes: dict[str, int] = {}
    exit_code = None
    for word in block.argument.split():
        key, _, value = word.partition("=")
        if key == "exit":
            exit_code = int(value)
        elif key in _OUTCOMES:
            outcomes[key] = int(value)
        else:
            raise ValueError(f"{block.where}: unknown expectation {word!r}")
    return outcomes, exit_code


def _matches(shown: str, actual: str) -> bool:
    """``shown`` (with ``...`` for any text) occurs in ``actual``."""
    at = 0
    for part in shown.split("..."):
        found = actual.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return True


def _run_console(block: Block, pytester: pytest.Pytester) -> None:
    lines = block.code.splitlines()
    commands = [n for n, text in enumerate(lines) if text.startswith("$ ")]
    if len(commands) != 1 or not lines[commands[0]].startswith("$ pytest"):
        raise ValueError(f"{block.where}: an expect block holds exactly one `$ pytest` command")
    args = shlex.split(lines[commands[0]][len("$ pytest") :])
    outcomes, exit_code = _expectations(block)
    result = pytester.runpytest("-p", "no:hypothesispytest", *args)
    output = [*result.outlines, *result.errlines]
    context = f"{block.where}: `{lines[commands[0]][2:]}`\n" + "\n".join(output)
    if outcomes or exit_code is None:
        parsed = result.parseoutcomes()
        got = {k: parsed.get(k, 0) for k in _OUTCOMES}
        assert got == {k: outcomes.get(k, 0) for k in _OUTCOMES}, context
    if exit_code is not None:
        assert int(result.ret) == exit_code, context
    _check_shown(block, lines[commands[0] + 1 :], output, context)


def _check_shown(block: Block, shown_lines: list[str], output: list[str], context: str) -> None:
    """Each line ``shown_lines`` shows occurs in ``output``, in order."""
    at = 0
    for shown in (s.strip() for s in shown_lines):
        if not shown or shown == "...":  # a line of its own: "more output here"
            continue
        while at < len(output) and not _matches(shown, output[at]):
            at += 1
        assert at < len(output), f"{block.where}: output line not found: {shown!r}\n{context}"
        at += 1


def _run_python(block: Block, module: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> str:
    """Execute ``block`` in ``module``; returns what it printed (which is also printed)."""
    code = compile(block.code, block.where, "exec")
    printed = io.StringIO()
    with monkeypatch.context() as patch, contextlib.redirect_stdout(printed):
        if block.directive != "real-time":
            patch.setattr(time, "sleep", _no_real_sleep)
        exec(code, module.__dict__)
    sys.stdout.write(printed.getvalue())
    return printed.getvalue()


@pytest.fixture
def scratch(pytester: pytest.Pytester) -> Path:
    """The page's folder: the current directory, on sys.path, with a plain pytest.ini."""
    pytester.makeini(_INI)
    pytester.syspathinsert()
    return pytester.path


def _runs(block: Block) -> bool:
    return block.directive in ("file", "expect", "output") or (
        block.lang == "python" and block.directive != "no-test"
    )


RUNNABLE = [p for p in EXAMPLED if any(_runs(b) for b in blocks(p))]


@pytest.mark.parametrize("page", RUNNABLE)
def test_page_examples_run(
    page: str, scratch: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "docs_" + re.sub(r"\W", "_", page.removesuffix(".md"))
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    printed = ""
    for block in blocks(page):
        if block.directive == "no-test":
            continue
        if block.directive == "output":
            lines = block.code.splitlines()
            _check_shown(block, lines, printed.splitlines(), f"{block.where}:\n{printed}")
        elif block.directive == "file":
            target = scratch / block.argument
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code, encoding="utf-8")
            importlib.invalidate_caches()
        elif block.directive == "expect":
            _run_console(block, pytester)
        elif block.lang == "python":
            printed = _run_python(block, module, monkeypatch)
    module.__dict__.clear()  # drop the examples' objects now, not at the next collection


# --------------------------------------------------------------------------- the pages


def test_every_page_is_in_the_nav() -> None:
    nav = MKDOCS.read_text(encoding="utf-8")
    assert [p for p in PAGES if p not in nav] == []


def test_examples_use_fences_and_directives_the_runner_knows() -> None:
    for page in EXAMPLED:
        for block in blocks(page):
            if block.lang == "py":
                raise AssertionError(f"{block.where}: write ```python, which this test runs")
            if block.directive == "expect" and block.lang != "console":
                raise AssertionError(f"{block.where}: expect belongs before a console block")
            if block.lang == "python":  # no-test examples too must at least be Python
                compile(block.code, block.where, "exec")


def test_unknown_directives_and_unclosed_fences_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "DOCS", tmp_path)
    (tmp_path / "typo.md").write_text("<!-- no-tset -->\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="unknown directive"):
        blocks("typo.md")
    (tmp_path / "open.md").write_text("```python\npass\n")
    with pytest.raises(ValueError, match="unclosed"):
        blocks("open.md")
    (tmp_path / "ok.md").write_text("<!-- file: a/b.py -->\n```python\nx = 1\n```\n")
    [block] = blocks("ok.md")
    assert (block.directive, block.argument, block.code) == ("file", "a/b.py", "x = 1\n")
    assert block.line == 2


def test_an_example_that_sleeps_in_real_time_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("docs_sleepy")
    block = Block("x.md", 1, "python", "import time\ntime.sleep(0.5)\n")
    with pytest.raises(RealWait, match=r"time.sleep\(0.5\)"):
        _run_python(block, module, monkeypatch)
    assert time.sleep is not _no_real_sleep  # restored


def test_output_lines_match_with_ellipses() -> None:
    assert _matches("1 passed in ...s", "==== 1 passed in 0.12s ====")
    assert not _matches("2 passed", "1 passed, 2 failed")
    assert not _matches("a...b", "b a")


def kinds_table() -> str:
    """The table of fault kinds that docs/faults.md must hold, built from faults.kinds."""

    def sites(info: KindInfo) -> str:
        if info.sites >= {*SITES, PY}:
            return "every site"
        shown = ", ".join(f"`{s}`" for s in SITES if s in info.sites)
        return shown + (", `py:`" if PY in info.sites else "")

    rows = ["| kind | what it does | sites |", "|---|---|---|"]
    rows += [f"| `{k.signature}` | {k.doc} | {sites(k)} |" for k in KINDS.values()]
    return "\n".join(rows) + "\n"


def test_the_kinds_table_in_faults_md_matches_the_code() -> None:
    page = (DOCS / "faults.md").read_text(encoding="utf-8")
    expected = kinds_table()
    assert expected in page, "paste this table into docs/faults.md:\n\n" + expected


def test_the_sites_table_in_faults_md_matches_the_code() -> None:
    page = (DOCS / "faults.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `((?:llama|daemon)\.\w+)` \| [^|]+ \| ([^|]+) \|$", page, re.MULTILINE)
    kinds = {site: text.strip() for site, text in rows}
    assert set(kinds) == set(SITES)
    for site, text in kinds.items():
        listed = kinds[text.removeprefix("as `").rstrip("`")] if text.startswith("as `") else text
        assert listed.split(", ") == list(kinds_for(site)), site


def test_the_spec_errors_shown_in_faults_md_are_what_parse_raises() -> None:
    # Exactly, carets included: the output check alone would match any line with a caret.
    [shown] = [b for b in blocks("faults.md") if b.directive == "output" and "^" in b.code]
    lines = shown.code.splitlines()
    assert lines
    assert len(lines) % 3 == 0  # message, spec, caret
    for i in range(0, len(lines), 3):
        with pytest.raises(SpecError) as caught:
            parse(lines[i + 1].strip())
        assert str(caught.value).splitlines() == lines[i : i + 3]


def test_a_shown_output_line_that_was_not_printed_fails() -> None:
    block = Block("x.md", 3, "", "one\n...\nthree\n", "output")
    _check_shown(block, block.code.splitlines(), ["one", "two", "three"], "")
    with pytest.raises(AssertionError, match="output line not found: 'three'"):
        _check_shown(block, block.code.splitlines(), ["three", "one", "two"], "")


def test_the_classifier_table_in_core_md_names_every_default_rule() -> None:
    page = (DOCS / "core.md").read_text(encoding="utf-8")
    rows = re.findall(
        r"^\| `([\w-]+)` \| [^|]+ \| (\w+) \| (\w+) \| (yes|no) \| (\w+) \|$", page, re.M
    )
    assert rows == [
        (
            r.name,
            r.category.value,
            r.severity.name.lower(),
            "yes" if r.retryable else "no",
            r.action.value,
        )
        for r in DEFAULT_RULES
    ]


def test_every_file_example_starts_with_its_name() -> None:
    # The directive is invisible in the rendered page: the first line tells the reader.
    for page in PAGES:
        for block in blocks(page):
            if block.directive == "file":
                assert block.code.startswith(f"# {block.argument}\n"), block.where
