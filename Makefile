PYTHON ?= python3
# `make run` and `make test` work from a fresh clone: each installs the dependencies first, once (this stamp
# records it; it is redone when requirements.txt or pyproject.toml changes).
INSTALLED := .make-installed
# pytest-xdist workers for make test / test-fast, each test file on one worker (its module fixtures built once).
# Most tests are compile-bound and XLA compiles on one thread, so 2 workers on CI's 2 cores take ~0.6x the time.
TEST_WORKERS ?= 2

.PHONY: install lint test test-fast run bench

install:  ## install the pinned dependencies, then this package (editable: scripts run from any directory)
	$(PYTHON) -m pip install -r requirements.txt
	$(PYTHON) -m pip install -e .
	@echo "$(PYTHON)" > $(INSTALLED)

$(INSTALLED): requirements.txt pyproject.toml
	$(MAKE) install PYTHON="$(PYTHON)"

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
