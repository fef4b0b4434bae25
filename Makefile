# VeloFlux: every target does its own set-up, so a fresh machine needs only `make demo`
# or `make test`. Set-up is idempotent: a second run installs nothing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# docker-compose: only `docker-compose config`, offline (no container engine runs here).
# chromium (and a font for its screenshots): the dashboard's browser test.
DEBS   := haproxy prometheus docker-compose chromium fonts-dejavu-core

.PHONY: help deps debs venv lint test test-unit test-integration demo stack compose-check bench mutation clean

help:
	@echo "make demo   - set up, then run the agent against the local HAProxy stack"
	@echo "make test   - set up, then lint and run the whole test suite"
	@echo "make stack  - set up, then run the compose stack natively (no container engine)"
	@echo "make compose-check - set up, then run the compose stack under podman (root; no registry)"
	@echo "make bench  - set up, then run the benchmarks (writes docs/benchmarks.md figures)"
	@echo "make mutation - set up, then mutation-test the safety rules (slow; not part of make test)"

deps: debs venv

# Debian packages the tests and demo start for real.
debs:
	@missing=""; for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

lint: venv
	$(BIN)/ruff check agent integration tests bench
	$(BIN)/mypy
	$(BIN)/mypy bench
	$(BIN)/lint-imports

# The unit tests on two workers (pytest-xdist: they share nothing). The integration
# tests on two workers too, a file per worker (their processes take free ports, temp
# dirs and their own Envoy base ids, and most of their time is spent waiting on real
# processes), except those marked `solo` (the demo scenario, capacity, learning, the
# soak), which judge latencies or timings that another test's load would skew: they
# run after, alone.
test: deps lint
	$(BIN)/python -m pytest -n 2 tests/unit
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not solo" --durations=15 tests/integration
	$(BIN)/python -m pytest -m solo --durations=5 tests/integration

test-unit: venv
	$(BIN)/python -m pytest -n 2 tests/unit

test-integration: deps
	$(BIN)/python -m pytest tests/integration

demo: deps
	$(BIN)/python -m integration.demo

# The compose stack's programs on this machine, from the compose stack's own files.
stack: deps
	$(BIN)/python -m integration.compose_native

# The compose file itself, in containers: images built offline (debootstrap bases, a host
# wheelhouse), the stack up under podman-compose, a backend made slow, torn down.
# integration/compose_check.py says how; it needs root (debootstrap, rootful podman).
PODMAN_DEBS := podman runc debootstrap golang-github-containernetworking-plugin-dnsname
compose-check: venv
	@$(MAKE) --no-print-directory debs DEBS="$(DEBS) $(PODMAN_DEBS)"
	$(SUDO) $(BIN)/python -m integration.compose_check

bench: deps
	$(BIN)/python bench/bench_haproxy_1000.py --write
	$(BIN)/python bench/bench_learning.py --write
	$(BIN)/python bench/bench_daemon.py --write
	$(BIN)/python bench/bench_dashboard.py --write
	$(BIN)/python bench/bench_replicas.py --write
	$(BIN)/python bench/bench_envoy.py --write
	$(BIN)/python bench/bench_prometheus.py --write
	$(BIN)/python bench/bench_demo.py --write

# Mutation testing of the modules that carry the safety rules (bench/mutation.py): slow,
# so not part of `make test`. Prints per-module figures and writes them into
# docs/benchmarks.md; fails if a surviving mutant of the planner or a sink is unexplained.
mutation: venv
	$(BIN)/python bench/mutation.py --write

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
