# The README's two commands, `make demo` and `make test`, set everything up on a
# fresh clone: a virtualenv in .venv with the project and its extras.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all setup demo tour test test-default test-asyncio check lint typecheck docs bench bench-process soak clean

all: test

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,docs,progress,plot,mcm,dask]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mcm -o mandelbrot.png

# A tour of the queue's features in a few seconds (doc/examples/demo.py).
tour: $(STAMP)
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

# Before a release: kills, timeouts, lost nodes and hostile clients, counted
# (up to ~15 minutes on 2 cores; SOAK_ARGS=--quick for a one-minute smoke run).
soak: $(STAMP)
	$(PY) benchmarks/soak.py $(SOAK_ARGS)

# The process benchmark races ampoule (the `bench` extra) and AsynQueue 0.9.9,
# which the script installs into a virtualenv of its own ($(AQ099_VENV)).
AQ099_VENV ?= /tmp/aq099
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench-process: $(BENCH_STAMP)
	$(PY) benchmarks/bench_process.py --aq099-venv $(AQ099_VENV)

clean:
	rm -rf $(VENV) doc/_build build *.egg-info
