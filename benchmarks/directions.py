"""Directions (difference of means) against one plain forward over the same prompts, and their
peak memory at N=100 vs N=1000 prompts; each measurement in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from string import Template

from benchmarks.common import BenchResult, Context, row


def _rss_child(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints JSON; add its peak RSS (MB)."""
    from interp.errors import InterpError

    wrapped = (code + "\nimport resource, json as _j\n"
               "print(_j.dumps({**RESULT, 'peak_rss_mb': "
               "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    proc = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise InterpError(f"benchmark child failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


DIRECTIONS_CHILD = """
import time, torch
from interp.model.load import load_model, get_tokenizer
from interp.data.sources import load_source
from interp.attacks.directions import DirectionsConfig, diff_in_means_prompts, stream_activations
from interp.scoring import pad_left
m = load_model("smollm2", device="cpu")
tok = get_tokenizer(m)
qs = (load_source("bank:capitals:0") + load_source("bank:continents:0")
      + load_source("bank:elements:0") + load_source("bank:animals:0"))
texts = [q.question for q in qs]
texts = (texts * (1 + $n // len(texts)))[:$n]
ids = [tok(t)["input_ids"] for t in texts]
half = len(ids) // 2
cfg = DirectionsConfig(outlier_z=$outlier, batch_size=16)
@torch.no_grad()
def plain():
    for s in range(0, len(ids), 16):
        t, mk = pad_left(ids[s:s + 16], 0, "cpu")
        m(t, attention_mask=mk, return_type=None)
plain()
t0 = time.perf_counter(); plain(); t_plain = time.perf_counter() - t0
import gc, pathlib
gc.collect()
pathlib.Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
t0 = time.perf_counter(); diff_in_means_prompts(m, ids[:half], ids[half:], cfg)
t_dirs = time.perf_counter() - t0
hwm = [l for l in pathlib.Path("/proc/self/status").read_text().splitlines()
       if l.startswith("VmHWM")][0]
RESULT = {"n": $n, "plain_s": t_plain, "directions_s": t_dirs,
          "directions_peak_rss_mb": int(hwm.split()[1]) / 1024}
"""


def bench_directions(ctx: Context) -> list[BenchResult]:
    """Directions vs one plain forward over the same prompts; peak memory N=100 vs N=1000."""
    out = []
    runs = {}
    for outlier in (None, 3.0):
        for n in (100, 1000):
            code = Template(DIRECTIONS_CHILD).substitute(n=n, outlier=repr(outlier))
            runs[(outlier, n)] = _rss_child(code)
    for outlier in (None, 3.0):
        r = runs[(outlier, 1000)]
        label = "one pass" if outlier is None else "outlier drop (3 passes)"
        out.append(row(f"directions-time-vs-forward ({label})", r["directions_s"],
                       r["plain_s"], "seconds (ratio: forward / directions)",
                       r["plain_s"] / r["directions_s"], 1 / 1.2, n=1000))
    small, big = runs[(3.0, 100)], runs[(3.0, 1000)]
    key = "directions_peak_rss_mb"  # peak while computing directions (model loaded before)
    out.append(row("directions-memory-n1000-vs-n100", big[key], small[key],
                   "MB peak RSS while computing (ratio: N=100 / N=1000)",
                   small[key] / big[key], 1 / 1.1, runs={
                       f"{k[0]}-{k[1]}": v for k, v in runs.items()}))
    return out
