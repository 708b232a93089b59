# One-command set-up: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= runs/demo
# A second `make demo` continues the run in DEMO_DIR (or, finished, only evaluates it again);
# DEMO_ARGS=--overwrite trains it afresh.
DEMO_ARGS ?= --auto-resume

.PHONY: setup test demo clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; the package itself is installed editable.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/verydeep demo --out $(DEMO_DIR) $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
