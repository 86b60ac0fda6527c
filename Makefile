# The two commands a newcomer types: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export SPLITLAB_DATA ?= $(abspath ../shared/datasets)

.PHONY: demo test bench venv clean compose-check certs

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (splitlab needs Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m benchmarks.demo

test: $(STAMP)
	bash tests/setup_system.sh
	$(PY) -m pytest
	bash tests/oldest_python.sh

bench: $(STAMP)
	$(PY) -m benchmarks run benchmarks/configs/training.yaml

# Not part of `test`: builds the image (gigabytes of downloads) and runs the compose stacks on the
# Docker engine that is running (deploy/README.md). Options: make compose-check ARGS='--variant sniff'
compose-check: $(STAMP)
	$(PY) deploy/compose_check.py $(ARGS)

# A local CA and certificates for TLS / mutual TLS (README "Transport security"), into certs/ (ignored)
certs:
	sh deploy/make_certs.sh certs

clean:
	rm -rf $(VENV) .venv-oldest artifacts captures out
