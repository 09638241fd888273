# The interpreter: a project virtual environment, .venv, made from BOOTSTRAP_PYTHON (so a system Python that
# refuses pip installs, PEP 668's "externally managed" on Debian and Ubuntu, works), unless PYTHON names another
# (PYTHON=python3 installs into that interpreter as it is).
BOOTSTRAP_PYTHON ?= python3
VENV := .venv
ifeq ($(origin PYTHON),undefined)
PYTHON := $(VENV)/bin/python
endif
# `make run` and `make test` work from a fresh clone: each installs the dependencies first, once. This stamp
# records it for PYTHON; it is redone when requirements.txt or pyproject.toml changes, when PYTHON changes, and
# when PYTHON's fedbat_jax is not this checkout's (an editable install made from another clone).
INSTALLED := .make-installed
OURS := $(shell $(PYTHON) -c "import importlib.util as u, os; s = u.find_spec('fedbat_jax'); \
	print(int(bool(s) and os.path.realpath(os.path.dirname(os.path.dirname(s.origin))) == os.path.realpath('$(CURDIR)')))" 2>/dev/null)
ifneq ($(OURS)$(shell cat $(INSTALLED) 2>/dev/null),1$(PYTHON))
$(shell rm -f $(INSTALLED))
endif
# pytest-xdist workers for make test / test-fast, each test file on one worker (its module fixtures built once).
# Most tests are compile-bound and XLA compiles on one thread, so 2 workers on CI's 2 cores take ~0.6x the time.
TEST_WORKERS ?= 2

.PHONY: install lint test test-fast run bench

install: $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/bin/python)  ## install the pinned dependencies, then this package (editable: scripts run from any directory)
	$(PYTHON) -m pip install -r requirements.txt
	$(PYTHON) -m pip install -e .
	@echo "$(PYTHON)" > $(INSTALLED)

$(INSTALLED): requirements.txt pyproject.toml
	$(MAKE) install PYTHON="$(PYTHON)"

# --system-site-packages: what the bootstrap interpreter already has is used, not downloaded again (pip installs
# the pinned versions beside it where they differ). Without ensurepip (Debian's python3-venv not installed) the
# venv is made without pip and uses the system's pip, which PEP 668 lets install inside a venv.
$(VENV)/bin/python:
	$(BOOTSTRAP_PYTHON) -m venv --system-site-packages $(VENV) || \
	  { rm -rf $(VENV); $(BOOTSTRAP_PYTHON) -m venv --system-site-packages --without-pip $(VENV); }
	@$(VENV)/bin/python -m pip --version > /dev/null 2>&1 || { rm -rf $(VENV); echo "make: $(BOOTSTRAP_PYTHON) \
	  can make no virtual environment with pip: install python3-venv (Debian/Ubuntu: apt install python3-venv), or \
	  set PYTHON to an interpreter whose environment takes pip installs"; exit 1; }

lint: $(INSTALLED)  ## ruff over the package, experiments, tests and the notebook (the rules are in pyproject.toml)
	$(PYTHON) -m ruff check .

test-fast: $(INSTALLED)  ## the edit-test loop: every test not marked slow
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests

test: $(INSTALLED)  ## the whole test suite on TEST_WORKERS workers (timings: docs/benchmarks.md)
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

run: $(INSTALLED)  ## FedBAT vs FedAvg on the bundled mnist5k digits, offline: table + runs/compare/compare.png
	$(PYTHON) experiments/compare.py --config experiments/configs/mnist5k.py --workdir runs/compare

bench: $(INSTALLED)  ## samples/s of FedBAT and FedAvg rounds: CNN4 (10 clients x batch 64), ResNet-10 on 32x32x3; compressor costs
	$(PYTHON) experiments/bench.py --out runs/bench_results.json
