# Altostack: `make run` starts the all-in-one cloud, `make test` runs every check.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Debian's interpreter: its venv can see python3-nftables and python3-rados later on.
SYSTEM_PYTHON ?= /usr/bin/python3

.PHONY: run test deps system-deps lint typecheck imports unit bench clean

run: deps
	$(VENV)/bin/alto up

# Two pytest sessions side by side: the tests of real host components in one, the rest in
# the other (scripts/run-tests; TEST_SERIAL=1 for one session).
test: deps lint typecheck imports
	PY=$(PY) ./scripts/run-tests --durations=25 $(PYTEST_ARGS)

system-deps:
	@./scripts/install-system-deps

deps: system-deps $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: deps
	$(VENV)/bin/mypy

imports: deps
	$(VENV)/bin/lint-imports

unit: deps
	PY=$(PY) TEST_MARK="not slow" ./scripts/run-tests $(PYTEST_ARGS)

bench: deps
	$(PY) bench/api.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
