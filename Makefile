# cnnzoo developer entry points. `make demo` runs the main job, `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are installed first and pinned, so pip never backtracks through releases
# or pulls a different CUDA build; pyproject.toml accepts the range these belong to.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv install test data demo protos bench lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: venv

test: venv
	$(PY) -m pytest

# MNIST, Fashion-MNIST and CIFAR-10 for the tests and examples (needs internet), into
# $CNNZOO_DATA or ./data
data: venv
	$(PY) scripts/download_data.py

demo: venv
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

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

clean:
	rm -rf model_repository out build *.egg-info .pytest_cache
