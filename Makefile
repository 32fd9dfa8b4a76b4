# Everything a fresh machine with Python 3.11+ needs: `make run`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test migrate bench soak clean venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/bastion migrate
	$(BIN)/bastion serve

migrate: $(STAMP)
	$(BIN)/bastion migrate

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Benchmarks (<= 10 min on 2 cores): writes benchmarks/results/ and benchmarks/latest/SUMMARY.md.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

soak: $(STAMP)
	BASTION_SOAK=1 $(BIN)/python -m pytest -q tests/faults $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) data/*.db
