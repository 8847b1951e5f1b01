"""`interp bench`: the toolkit against what a user would run instead, as ratios measured in one run.

Each benchmark runs both sides back to back, `repeats` times, and reports the median and spread
of each side and `ratio`, oriented so that higher is better for us. Benchmarks needing an
optional peer (lm-evaluation-harness, nanoGCG) say "skipped" with the reason and the command
that installs it when the peer is not installed; nothing is estimated, and nothing is installed
here: `make bench-peers` sets the peers up (`make bench` does that, then runs this).
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from benchmarks import attention, directions, gcg, harness, inference, training, utilisation
from benchmarks.common import BenchResult, Context
from benchmarks.report import markdown

BENCHMARKS: dict[str, Callable[[Context], BenchResult | list[BenchResult]]] = {
    "scoring-vs-transformers": inference.bench_scoring_vs_hf,
    "scoring-vs-lm-eval": harness.bench_lm_eval,
    "directions": directions.bench_directions,
    "generation": inference.bench_generation,
    "utilisation": utilisation.bench_utilisation,
    "gcg": gcg.bench_gcg,
    "lora": training.bench_lora_vs_peft,
    "rmu-step": training.bench_rmu_step,
    "npo-step": training.bench_npo_step,
    "snip": training.bench_snip,
    "attention": attention.bench_attention,
}


def run_bench(names: list[str] | None, out: Path, repeats: int = 3, n_questions: int = 128,
              progress: bool = True) -> dict:
    """Run the benchmarks `names` (default: all) on the embedded model and write the results to
    `out` (JSON: the machine, repeats, question count and rows) and a markdown table beside it;
    return the JSON payload."""
    from interp.data.sources import load_source
    from interp.errors import InterpError
    from interp.model.load import load_model
    from interp.store import atomic_write_text, check_writable, write_json

    names = names or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise InterpError(f"unknown benchmark(s) {sorted(unknown)}; use {sorted(BENCHMARKS)}")
    out = Path(out)
    check_writable(out)
    model = load_model("smollm2", device="cpu")
    qs = (load_source("bank:capitals:1") + load_source("bank:elements:1"))[:n_questions]
    ctx = Context(model, qs, repeats)
    results: list[BenchResult] = []
    for name in names:
        if progress:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
        r = BENCHMARKS[name](ctx)
        results += r if isinstance(r, list) else [r]
    payload = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "torch": torch.__version__, "python": platform.python_version()},
               "repeats": repeats, "n_questions": len(qs),
               "benchmarks": [asdict(r) for r in results]}
    write_json(out, payload)
    atomic_write_text(out.with_suffix(".md"), markdown(payload))
    return payload
