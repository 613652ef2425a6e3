"""The package's shape: what importing it costs, what it exports, and what installing it
brings (pyproject.toml's dependencies and extras, and the docs that name them)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import pytest_resilience
from pytest_resilience.plugin.fixtures import TestClock

HEAVY = ("pytest", "hypothesis", "llama_cpp", "httpx", "numpy", "gguf", "psutil", "faults")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


def _heavy(loaded: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(m for m in loaded if m.split(".")[0] in HEAVY and m.split(".")[0] not in allowed)


def test_importing_the_core_pulls_in_no_heavy_dependency() -> None:
    names = ", ".join(pytest_resilience.__all__)
    loaded = _modules_after(f"from pytest_resilience import {names}")
    assert _heavy(loaded) == []


def test_importing_the_backends_is_lazy() -> None:
    loaded = _modules_after(
        "import pytest_resilience.backends.llama, pytest_resilience.backends.daemon, "
        "pytest_resilience.backends.tiny, pytest_resilience.backends.resilient"
    )
    assert _heavy(loaded) == []


def test_importing_faults_pulls_in_no_test_framework_or_model_runtime() -> None:
    loaded = _modules_after("import pytest_resilience, faults, faults.proxy")
    assert _heavy(loaded, allowed=("faults",)) == []


def test_importing_the_package_imports_no_core_module_until_a_name_is_used() -> None:
    # pytest imports the package in every run of every user: it must stay nearly free.
    loaded = _modules_after("import pytest_resilience")
    assert sorted(m for m in loaded if m.startswith("pytest_resilience.")) == []


def test_all_lists_exactly_the_public_names() -> None:
    exported = pytest_resilience._EXPORTS
    assert sorted(pytest_resilience.__all__) == sorted(exported)
    assert len(set(pytest_resilience.__all__)) == len(pytest_resilience.__all__)
    for name, module in exported.items():
        # each name really lives where the table says, and resolves
        defining = __import__(f"pytest_resilience.{module}", fromlist=[name])
        assert getattr(pytest_resilience, name) is getattr(defining, name), name
    assert "__version__" not in pytest_resilience.__all__


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        pytest_resilience.NoSuchThing  # noqa: B018


def test_every_exported_callable_is_documented() -> None:
    for name in pytest_resilience.__all__:
        obj = getattr(pytest_resilience, name)
        if callable(obj) and isinstance(obj, type | type(len) | type(lambda: 0)):
            assert obj.__doc__, f"{name} has no docstring"


# ------------------------------------------------------------------------- packaging

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _name(requirement: str) -> str:
    """The distribution name of a requirement: ``pytest>=8.3`` -> ``pytest``."""
    found = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert found is not None, requirement
    return found.group(0).lower().replace("_", "-")


def _wall_extra() -> str:
    """The extra (other than dev) that brings freezegun."""
    [extra] = [
        name
        for name, requirements in PROJECT["optional-dependencies"].items()
        if name != "dev" and "freezegun" in map(_name, requirements)
    ]
    return str(extra)


def test_pytest_is_a_dependency_of_the_plugin() -> None:
    # the pytest11 entry point imports pytest: installing the package must bring it
    assert PROJECT["entry-points"]["pytest11"] == {"resilience": "pytest_resilience.plugin.hooks"}
    assert "pytest>=8.3" in PROJECT["dependencies"]
    # and nothing heavy: the model runtimes are extras
    assert [_name(r) for r in PROJECT["dependencies"]] == ["pytest"]


def test_loading_the_plugin_imports_nothing_but_pytest_and_the_standard_library() -> None:
    code = (
        "import sys, pytest\n"
        "before = set(sys.modules)\n"
        "import pytest_resilience.plugin.hooks\n"
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    ours = {"pytest_resilience", "faults"}
    assert sorted(m for m in out if m not in sys.stdlib_module_names and m not in ours) == []


def test_freezegun_comes_with_a_named_extra() -> None:
    extra = _wall_extra()
    assert extra == "wall"
    assert "freezegun>=1.5" in PROJECT["optional-dependencies"][extra]


def _names_the_extra(text: str, extra: str) -> bool:
    return bool(
        re.search(rf"`{extra}` extra|pytest-resilience\[[\w,]*\b{extra}\b[\w,]*\]", text)
        or re.search(rf"`{extra}` \(freezegun", text)
    )


def test_the_install_docs_name_the_wall_extra() -> None:
    extra = _wall_extra()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = readme.split("## Install\n", 1)[1].split("\n## ", 1)[0]
    assert _names_the_extra(install, extra)
    quickstart = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    assert _names_the_extra(quickstart.split("\n## ", 2)[1], extra)  # its Install section


WALL_PAGES = [p for p in DOC_PAGES if "wall=True" in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("page", WALL_PAGES, ids=[p.name for p in WALL_PAGES])
def test_every_page_that_says_wall_true_names_the_extra(page: Path) -> None:
    assert _names_the_extra(page.read_text(encoding="utf-8"), _wall_extra())


def test_wall_time_without_freezegun_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "freezegun", None)  # import freezegun now fails
    monkeypatch.setitem(sys.modules, "freezegun.api", None)
    clock = TestClock()
    try:
        with pytest.raises(ImportError, match=r"pip install 'pytest-resilience\[wall\]'") as e:
            clock.freeze_wall_time()
        assert e.value.name == "freezegun"
    finally:
        clock.close()


def test_no_module_imports_itself_back() -> None:
    # import-linter holds the layers apart; inside a layer, no two modules may reach each
    # other either (imports for type checking only are not cycles at run time).
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph(
        "pytest_resilience", "faults", exclude_type_checking_imports=True, cache_dir=None
    )
    cycles = sorted(
        {
            " <-> ".join(sorted((a, b)))
            for a in graph.modules
            for b in graph.find_modules_directly_imported_by(a)
            if graph.chain_exists(importer=b, imported=a)
        }
    )
    assert cycles == []
