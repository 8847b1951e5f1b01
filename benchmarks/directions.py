"""Directions (difference of means) against one plain forward over the same prompts, and their
peak memory at N=100 vs N=1000 prompts; each measurement in a fresh interpreter."""

from __future__ import annotations

import os
import sys

from benchmarks.child import last_error, last_json, run_module
from benchmarks.common import BenchResult, Context, row

DIRECTIONS_CHILD = "benchmarks.directions_child"  # run in a fresh interpreter


def _measure(n: int, outlier_z: float | None) -> dict:
    """One measurement of `benchmarks.directions_child` in a fresh interpreter."""
    from interp.errors import InterpError

    args = [f"--n={n}"] + ([] if outlier_z is None else [f"--outlier-z={outlier_z}"])
    proc = run_module(sys.executable, DIRECTIONS_CHILD, args,
                      env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise InterpError(f"benchmark child failed: {last_error(proc)}")
    return last_json(proc)


def bench_directions(ctx: Context) -> list[BenchResult]:
    """Directions vs one plain forward over the same prompts; peak memory N=100 vs N=1000."""
    out = []
    runs = {}
    for outlier in (None, 3.0):
        for n in (100, 1000):
            runs[(outlier, n)] = _measure(n, outlier)
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
