# One command for each everyday job. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

VASTAI_VENV := .venv-vastai

.PHONY: deps system-deps test lint bench drill campaign chaos clean

# promtool checks scrapes and alert rules; Chromium loads the dashboard in the tests; the store contract tests
# start a throwaway PostgreSQL cluster (initdb and pg_ctl come with the server package).
system-deps:
	@scripts/install-system-deps promtool:prometheus chromium:chromium,fonts-dejavu-core pg_ctlcluster:postgresql

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.installed-*
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

deps: system-deps $(STAMP)

# The official Vast.ai CLI, in a venv of its own: the compatibility tests drive it against our emulator.
$(VASTAI_VENV)/bin/vastai:
	$(PYTHON) -m venv $(VASTAI_VENV)
	$(VASTAI_VENV)/bin/python -m pip install --quiet --disable-pip-version-check vastai==1.9.1

# Most of the suite waits on real hosts, so it runs in TEST_JOBS processes (a module stays in one); the tests
# marked serial measure times and rates, and run alone afterwards. Both parts always run; 5 is "none selected".
# The temporary files go under a short /tmp/dt.* (kept when a test fails): the hosts' Unix sockets live there,
# and a socket path may not exceed 107 bytes.
TEST_JOBS ?= 3
test: deps $(VASTAI_VENV)/bin/vastai
	@base=$$(mktemp -d /tmp/dt.XXXXXX); \
	  $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not serial" --basetemp=$$base/p $(PYTEST_ARGS); \
	  parallel=$$?; $(PY) -m pytest -q -m serial --basetemp=$$base/s $(PYTEST_ARGS); serial=$$?; \
	  ok() { [ $$1 -eq 0 ] || [ $$1 -eq 5 ]; }; \
	  if ok $$parallel && ok $$serial; then rm -rf $$base || true; else echo "the failed tests' files: $$base"; exit 1; fi

lint: deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/vermin --quiet --no-tips --violations -t=3.8- src/dumont/agent src/dumont/endpoint/fallthrough.py

# Every benchmark runs even when an earlier one fails; the target fails if any did.
bench: deps
	$(PY) bench/sync_cycle.py; sync=$$?; $(PY) bench/restore.py; restore=$$?; $(PY) bench/cli.py; cli=$$?; \
	  $(PY) bench/rpo.py; rpo=$$?; $(PY) bench/fleet.py; fleet=$$?; $(PY) bench/ciphers.py; ciphers=$$?; \
	  exit $$(( sync || restore || cli || rpo || fleet || ciphers ))

# The replication campaign: KILLS kills of the primary inside passes, every retained snapshot checked each time.
KILLS ?= 100
SEED ?=
campaign: deps
	$(PY) bench/replication_campaign.py --kills $(KILLS) $(if $(SEED),--seed $(SEED))

# The chaos campaign: MINUTES of seeded faults against PAIRS pairs, a fault every GAP seconds on average.
MINUTES ?= 10
PAIRS ?= 1
GAP ?= 30
chaos: deps
	$(PY) -m dumont chaos --minutes $(MINUTES) --pairs $(PAIRS) --gap $(GAP) $(if $(SEED),--seed $(SEED))

drill: deps
	$(PY) -m dumont drill $(DRILL_ARGS)

clean:
	rm -rf $(VENV) $(VASTAI_VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info src/*.egg-info
