# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test
PSTAMP := $(VENV)/.installed-perf

.PHONY: run test lint install clean deb-test

$(PY):
	@# Debian's python3 needs python3-venv for ensurepip; install it when missing and root.
	$(PYTHON) -m venv $(VENV) || { [ "$$(id -u)" = 0 ] && rm -rf $(VENV) && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PIP) install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(TSTAMP): $(STAMP)
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(STAMP)

# Debian packages, installed only when missing and root: $(call deb-install,PKGS,what to do
# when not root). The system tests skip with a reason when theirs are absent.
define deb-install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "not root: cannot apt-get install$$missing"; $(2); fi; \
	fi
endef

DEB_TEST := iproute2 procps mariadb-server galera-4 rsync keepalived chromium curl systemd \
	haproxy nginx wrk
deb-test:
	$(call deb-install,$(DEB_TEST),echo "tests needing them will skip")

run: $(STAMP)
	$(VENV)/bin/pylb demo

# The perf extra (Locust) too: tests/system/test_perf_tools.py runs `make locust`'s script.
test: $(TSTAMP) $(PSTAMP) deb-test
	$(VENV)/bin/ruff check pylb tests
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(TSTAMP)
	$(VENV)/bin/ruff check pylb tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Performance (issue 7): `make bench` runs perf/bench.py (pylb side by side with HAProxy on
# nginx backends; results in perf/results/), `make locust` the OpenStack mix against
# `pylb demo`. Debian packages installed only when missing and root, as for deb-test.
DEB_BENCH := haproxy nginx wrk
.PHONY: bench locust deb-bench

$(PSTAMP): $(STAMP)
	$(PIP) install -q -e '.[perf]'
	touch $@

deb-bench:
	$(call deb-install,$(DEB_BENCH),exit 1)

bench: $(STAMP) deb-bench
	$(PY) perf/bench.py $(BENCH_ARGS)

locust: $(PSTAMP)
	$(PY) perf/locust_run.py $(LOCUST_ARGS)
