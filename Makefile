# pyro_fusion: set-up, tests, demo and benchmarks.
# `make test` and `make demo` work from nothing: they create .venv on first use.
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
BENCHMARKS := $(sort $(filter-out benchmarks/_%.py,$(wildcard benchmarks/*.py)))

.PHONY: venv test demo bench clean

venv: $(STAMP)

# torch is installed first and pinned, so pip never resolves `torch>=2.0` to a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install "$(TORCH_SPEC)"
	$(VENV_PYTHON) -m pip install -e ".[test,flower,bench]"
	touch $@

test: venv
	$(VENV_PYTHON) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/pyro-fusion demo

bench: venv
	@set -e; for script in $(BENCHMARKS); do \
		echo "== $$script" >&2; \
		$(VENV_PYTHON) $$script; \
	done

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis
