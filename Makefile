SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# MLServer (a real Open Inference Protocol server the remote client is tested against) pins starlette and
# protobuf versions of its own, so it gets a virtual environment of its own; tests start it as a subprocess.
MLS_VENV := .venv-mlserver
MLS_VERSION := 1.7.1

.PHONY: install test test-fast typecheck demo bench lint docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	test -x $(MLS_VENV)/bin/python || $(PY) -m venv $(MLS_VENV)
	$(MLS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLS_VENV)/bin/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(MLS_VENV)/bin/python -m pip install --quiet -c constraints.txt 'mlserver==$(MLS_VERSION)' \
		'mlserver-sklearn==$(MLS_VERSION)' -e .
	touch $(STAMP)

install: $(STAMP)

# the type check ([tool.mypy] in pyproject.toml) runs first: CI (.ci/run) runs `make test`, the whole suite
test: typecheck
	$(BIN)/python -m pytest -q -m "slow or not slow"

# the developer's loop: a plain `pytest` leaves out the tests marked slow (addopts in pyproject.toml)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q

typecheck: $(STAMP)
	$(BIN)/python -m mypy

demo: $(STAMP)
	$(BIN)/modelseal demo --out demo-out --force

bench: $(STAMP)
	mkdir -p bench-out
	set -o pipefail; for f in benchmarks/*.py; do n=$$(basename $$f .py); echo "== $$n" >&2; \
		$(BIN)/python $$f | tee bench-out/$$n.json || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs

# the docs site into site/ (tests/test_docs.py builds it the same way; `$(BIN)/mkdocs serve` to read it locally)
docs: $(STAMP)
	$(BIN)/python docs/gen_cli.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(MLS_VENV) build dist *.egg-info src/*.egg-info
