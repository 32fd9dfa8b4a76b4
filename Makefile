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

# `make test` and `make soak` run the suite against the project as it is shipped: a wheel built
# from this tree with the locked build backend, installed (not --editable) into its own venv
# whose dependencies come from requirements/test.txt with hashes checked, and run from a copy
# of the tree that holds no source package — so every module and every data file (Lua scripts,
# migrations, .conf, .yaml) must come from the wheel. tests/conftest.py refuses to run under
# BASTION_TEST_FROM_WHEEL=1 if a Bastion package is imported from anywhere else.
WVENV       := .venv-wheel
WBIN        := $(WVENV)/bin
WPIP        := $(WBIN)/python -m pip --disable-pip-version-check
WHEEL_STAMP := $(WVENV)/.test-installed
PACKAGES    := core httpkit policies audit store gateway services console api bastion
# What `make soak` runs: the fault suite in its long form, and the tests whose documented time
# figures (1 s propagation, 2 s catch-up, 5 s recovery) are asserted only under BASTION_SOAK=1.
SOAK_TESTS  := tests/faults tests/gateway/test_propagation.py tests/policies/test_rollout.py \
               tests/tokens/test_capability_tokens.py

.PHONY: run test lint unit test-latest lock migrate bench soak clean venv browser

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

$(WBIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	$(PYTHON) -m venv $(WVENV)

$(WHEEL_STAMP): $(WBIN)/python $(REQ)/test.txt $(REQ)/build.txt
	$(WPIP) install -q --require-hashes --no-deps -r $(REQ)/build.txt
	$(WPIP) install -q --require-hashes --no-deps -r $(REQ)/test.txt
	touch $@

# $(1): environment for pytest, $(2): its arguments. Builds the wheel in a temporary directory
# (no build/ or *.egg-info left in the tree, no stale file from an earlier build), installs it,
# copies the tree without the packages, .git, venvs and caches, and runs pytest there once.
define run_from_wheel
	@set -e; work=$$(mktemp -d "$${TMPDIR:-/tmp}/bastion-test.XXXXXX"); trap 'rm -rf "$$work"' EXIT; \
	mkdir "$$work/src"; \
	tar -cf - --exclude=__pycache__ pyproject.toml README.md $(PACKAGES) | tar -C "$$work/src" -xf -; \
	$(WPIP) wheel -q --no-deps --no-build-isolation -w "$$work/dist" "$$work/src"; \
	$(WPIP) install -q --no-deps --force-reinstall "$$work"/dist/bastion-*.whl; \
	$(WBIN)/python -c 'import shutil, sys; top = set(sys.argv[3:]) | {"data", "dist", "build"}; skip = {"__pycache__", ".git", ".hypothesis", ".pytest_cache", ".ruff_cache", ".mypy_cache"}; shutil.copytree(sys.argv[1], sys.argv[2], ignore=lambda d, names: [n for n in names if n in skip or n.startswith(".venv") or n.endswith(".egg-info") or (d == sys.argv[1] and n in top) or (d.endswith("benchmarks") and n == "results")])' . "$$work/tree" $(PACKAGES); \
	echo "make: running the suite from $$work/tree against the wheel installed in $(WVENV)"; \
	cd "$$work/tree" && BASTION_TEST_FROM_WHEEL=1 $(1) "$(CURDIR)/$(WBIN)/python" -m pytest -q $(2)
endef

# The machine-checked rules (README: "Checks"), from the source tree with the wheel venv's
# tools: the layering contracts (import-linter, [tool.importlinter] in pyproject.toml), ruff,
# and mypy --strict on the pure packages. A few seconds; `make test` runs it first.
# All three run, so one run shows every failure; any failure fails the target.
lint: $(WHEEL_STAMP)
	@status=0; \
	PYTHONPATH=$(CURDIR) $(WBIN)/lint-imports --no-cache || status=1; \
	$(WBIN)/ruff check --no-cache . || status=1; \
	$(WBIN)/mypy --cache-dir=/dev/null || status=1; \
	exit $$status

# The console's browser tests (tests/console) drive Debian's chromium through Playwright; a clean
# CI machine (root) gets it from apt. Never `playwright install`: it downloads a browser.
browser:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

test: browser lint $(WHEEL_STAMP)
	$(call run_from_wheel,,$(PYTEST_ARGS))

# The tests of pure code (tests/unit), with no PostgreSQL and no Redis: the session does not
# look for them and every connection attempt fails (tests/conftest.py). `make test` runs them too.
unit: $(TEST_STAMP)
	BASTION_TEST_NO_SERVICES=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)

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

# The long forms (BASTION_SOAK=1): bigger races and loads, more fuzzing, and the documented time
# figures asserted. Meant for a quiet machine; `make test` never asserts a speed.
soak: $(WHEEL_STAMP)
	$(call run_from_wheel,BASTION_SOAK=1,$(SOAK_TESTS) $(PYTEST_ARGS))

clean:
	rm -rf $(VENV) $(WVENV) .venv-latest data/*.db
