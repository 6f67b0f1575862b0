# cnnzoo developer entry points. `make demo` runs the main job, `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are installed first and pinned, so pip never backtracks through releases
# or pulls a different CUDA build; pyproject.toml accepts the range these belong to.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv install test data demo docs protos bench bench-tables lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[torch,test,docs]'
	touch $@

install: venv

test: venv
	$(PY) -m pytest

# MNIST, Fashion-MNIST and CIFAR-10 for the tests and examples (needs internet), into
# $CNNZOO_DATA or ./data
data: venv
	$(PY) scripts/download_data.py

# Ports and paths: `make demo GRPC_PORT=9001 METRICS_PORT=9002` (see scripts/demo.sh)
demo: venv
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

# The documentation site (mkdocs.yml) into build/site/; strict: any warning fails the build
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

protos: venv
	$(PY) -m cnnzoo.protos.codegen

lint: venv
	$(PY) -m pip install --quiet 'ruff==0.17.6'
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

bench: venv
	$(PY) bench/serving.py
	$(PY) bench/interpret.py

# docs/benchmarks.md from bench/results/*.json (after a benchmark run; commit both)
bench-tables: venv
	$(PY) scripts/bench_tables.py

clean:
	rm -rf model_repository out build *.egg-info .pytest_cache
