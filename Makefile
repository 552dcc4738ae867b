# The README's two commands, `make demo` and `make test`, set everything up on a
# fresh clone: a virtualenv in .venv with the project and its extras.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all setup demo test test-default test-asyncio check lint typecheck docs bench clean

all: test

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,docs,progress,plot]' --config-settings editable_mode=compat
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) doc/examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q test
	$(PY) -m pytest -q --reactor=asyncio test

check: lint typecheck docs

lint: $(STAMP)
	$(VENV)/bin/ruff check asynqueue mcmandelbrot test benchmarks
	$(VENV)/bin/ruff format --check asynqueue mcmandelbrot test benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -q -W --keep-going -b html doc doc/_build/html

bench: $(STAMP)
	$(PY) benchmarks/bench_threads.py

clean:
	rm -rf $(VENV) doc/_build build *.egg-info
