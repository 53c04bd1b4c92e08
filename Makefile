# The quick start: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: run test test-quick bench demo clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/llmcost demo --if-empty
	$(BIN)/llmcost dashboard --server.headless true --server.port $(PORT)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check llmcost tests bench app.py pages
	$(BIN)/python -m pytest

test-quick: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not slow"

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/run_all.py

demo: $(VENV)/.installed
	$(BIN)/llmcost demo

clean:
	rm -rf $(VENV) .pytest_cache
