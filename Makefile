# Set-up is two commands: `make run` and `make test`. Both create .venv if it is missing and install
# the exact versions of the lock files (requirements*.lock, with hashes); `make lock` regenerates
# them after a dependency changes in pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG := $(wildcard config.toml)
DIST   ?= dist
# The lock tool (uv: one resolution valid for Python 3.11-3.13 on every platform).
UV_VERSION := 0.13.9
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" --quiet

.PHONY: run test lint bench lock dist install clean

ifeq ($(PY_VERSION),)
$(error $(PYTHON) does not run; set PYTHON=python3.11, python3.12 or python3.13)
endif

# A venv made by another Python (e.g. after `make test PYTHON=python3.13`) is made again.
$(VENV)/.python-$(PY_VERSION):
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed-run: pyproject.toml requirements.lock | $(VENV)/.python-$(PY_VERSION)
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml requirements-dev.lock | $(VENV)/.python-$(PY_VERSION)
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/flipturn-gateway $(if $(CONFIG),--config $(CONFIG)) run

lint: $(VENV)/.installed-test
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy gateway tests

# The suite runs on two worker processes (pytest-xdist); PYTEST_WORKERS=0 runs it in one.
PYTEST_WORKERS ?= 2

test: lint
	$(BIN)/pytest -q -n $(PYTEST_WORKERS)

# After changing dependencies in pyproject.toml: `make lock`, then commit both lock files.
lock: | $(VENV)/.python-$(PY_VERSION)
	$(BIN)/pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) --extra fast -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) --extra fast --extra test -o requirements-dev.lock

# A wheel and an sdist in $(DIST)/.
dist: $(VENV)/.installed-test
	$(BIN)/python -m build --outdir $(DIST) .

# Install or upgrade on a Debian device (root): docs/deployment.md. Needs no .venv: the release
# gets its own virtualenv from requirements.lock. Uses $(DIST)'s wheel of this version if there is
# one, else builds from this tree. DESTDIR=/some/dir installs under that directory instead and
# touches no user, ownership or systemd (for checking the steps).
install:
	DESTDIR="$(DESTDIR)" PYTHON="$(PYTHON)" sh scripts/install.sh $(DIST)

# Benchmarks (docs/benchmarks.md): loopback only, ~10 min; e.g. BENCH_ARGS="--reps 1 --duration 5".
bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(DIST) build
