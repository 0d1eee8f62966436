# pyro_fusion: set-up, tests, demo, documentation and benchmarks.
# `make test`, `make demo` and `make docs` work from nothing: they create .venv on first use.
# Override e.g. `make test PYTHON=python3.11 PYTEST_ARGS="-m 'not slow'"`.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# OpenMP's default busy-waiting makes small-tensor work many times slower on a busy 2-core machine
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY

VENV_PYTHON := $(VENV)/bin/python
# Re-install when the packaging metadata changes; otherwise `make venv` is a no-op.
STAMP := $(VENV)/.pyro-fusion-installed
DOCS_STAMP := $(VENV)/.pyro-fusion-docs-installed
# Data sets pyro_fusion does not ship, passed explicitly (the development checkout keeps them in ../shared)
SHARED_DATA ?= $(abspath ../shared/data)
PYRO_FUSION_MNIST ?= $(SHARED_DATA)/mnist
export PYRO_FUSION_MNIST
SPHINX_ARGS ?= -W --keep-going
BENCHMARKS := $(sort $(filter-out benchmarks/_%.py,$(wildcard benchmarks/*.py)))

.PHONY: venv test demo docs bench clean

venv: $(STAMP)

# torch is installed first and pinned, so pip never resolves `torch>=2.0` to a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install "$(TORCH_SPEC)"
	$(VENV_PYTHON) -m pip install -e ".[test,flower,bench]"
	touch $@

# Sphinx, furo, myst-nb, jupytext (the docs extra) on top of the test environment
$(DOCS_STAMP): $(STAMP)
	$(VENV_PYTHON) -m pip install -e ".[test,flower,docs]"
	touch $@

test: venv
	$(VENV_PYTHON) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/pyro-fusion demo

# docs/_build/html, warnings as errors; tutorials executed at the small size and cached in docs/_build/.jupyter_cache
docs: $(DOCS_STAMP)
	$(VENV_PYTHON) -m sphinx $(SPHINX_ARGS) -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

bench: venv
	@set -e; for script in $(BENCHMARKS); do \
		echo "== $$script" >&2; \
		$(VENV_PYTHON) $$script; \
	done

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis docs/_build docs/tutorials/*.py
