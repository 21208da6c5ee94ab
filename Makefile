# The two ways in: `make quickstart` and `make test`. Both build their own virtual environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The torch pinned first is the CPU build; GPU users install their CUDA torch into the venv
# before running make (any torch in the project's range is kept).
TORCH  ?= torch==2.13.0

.PHONY: install quickstart test lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip -q

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	# builtin:ml-100k's files, without recbole's own heavy dependencies (pyproject.toml)
	$(BIN)/pip install -q --no-deps "recbole>=1.2,<1.3"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/lmforge quickstart $(ARGS)

test: install
	bash scripts/test-services.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
