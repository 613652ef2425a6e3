"""The package's shape: what importing it costs, and what it exports."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pytest_resilience

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
