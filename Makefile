# Everything a fresh machine with Python 3.11+ needs: `make run`, `make test`.
#
# Installs come from the lock files in requirements/ (exact versions and sha256 hashes of every
# dependency, direct and transitive), so a new release upstream never changes what a clone gets.
# `make lock` regenerates them from pyproject.toml; `make test-latest` runs the suite against the
# newest releases instead, so that an upgrade is a deliberate, tested change (README: "Upgrading
# a dependency").
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
REQ    := requirements
# The lock tool itself, pinned: uv's resolver, used only by `make lock`.
UV_VERSION := 0.13.9

RUN_STAMP   := $(VENV)/.run-installed
TEST_STAMP  := $(VENV)/.test-installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test test-latest lock migrate bench soak clean venv

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	$(PYTHON) -m venv $(VENV)

# Serving needs only the runtime lock; the project is installed without its (already locked)
# dependencies and without build isolation, so the build backend is the locked one too.
$(RUN_STAMP): $(BIN)/python $(REQ)/run.txt $(REQ)/build.txt pyproject.toml
	$(PIP) install -q --require-hashes --no-deps -r $(REQ)/build.txt
	$(PIP) install -q --require-hashes --no-deps -r $(REQ)/run.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

$(TEST_STAMP): $(RUN_STAMP) $(REQ)/test.txt
	$(PIP) install -q --require-hashes --no-deps -r $(REQ)/test.txt
	touch $@

$(BENCH_STAMP): $(TEST_STAMP) $(REQ)/bench.txt
	$(PIP) install -q --require-hashes --no-deps -r $(REQ)/bench.txt
	touch $@

venv: $(TEST_STAMP)

run: $(RUN_STAMP)
	$(BIN)/bastion migrate
	$(BIN)/bastion serve

migrate: $(RUN_STAMP)
	$(BIN)/bastion migrate

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The suite against the newest release of every dependency, in a separate venv (the lock is not
# touched): run it before `make lock` to see what an upgrade would break.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q --upgrade -e '.[test]'
	.venv-latest/bin/python -m pytest -q $(PYTEST_ARGS)

# Regenerate every lock file from pyproject.toml (and requirements/build.in) with hashes. The
# resolution is universal (every platform's wheels are hashed) for Python 3.11.
lock: $(BIN)/python
	$(PIP) install -q "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile -q --universal --python-version 3.11 --generate-hashes \
		requirements/build.in -o $(REQ)/build.txt $(LOCK_ARGS)
	$(BIN)/uv pip compile -q --universal --python-version 3.11 --generate-hashes \
		pyproject.toml -o $(REQ)/run.txt $(LOCK_ARGS)
	$(BIN)/uv pip compile -q --universal --python-version 3.11 --generate-hashes \
		pyproject.toml --extra test -o $(REQ)/test.txt $(LOCK_ARGS)
	$(BIN)/uv pip compile -q --universal --python-version 3.11 --generate-hashes \
		pyproject.toml --extra test --extra bench -o $(REQ)/bench.txt $(LOCK_ARGS)

# Benchmarks (<= 10 min on 2 cores): writes benchmarks/results/ and benchmarks/latest/SUMMARY.md.
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

soak: $(TEST_STAMP)
	BASTION_SOAK=1 $(BIN)/python -m pytest -q tests/faults $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-latest data/*.db
