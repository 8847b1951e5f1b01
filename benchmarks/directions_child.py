"""One directions measurement in a fresh interpreter (so its peak memory is its own), run by
`benchmarks.directions` as `python -m benchmarks.directions_child --n N [--outlier-z Z]`: the
embedded model, N bank questions as prompts, one plain forward over them timed against
difference-of-means directions (first half vs second half), the peak RSS while computing the
directions and of the whole process. Prints one JSON line."""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
from pathlib import Path

import torch


def prompts(tok, n: int) -> list[list[int]]:
    """`n` prompts' token ids: the bank questions, repeated as needed."""
    from interp.data.sources import load_source

    qs = (load_source("bank:capitals:0") + load_source("bank:continents:0")
          + load_source("bank:elements:0") + load_source("bank:animals:0"))
    texts = [q.question for q in qs]
    texts = (texts * (1 + n // len(texts)))[:n]
    return [tok(t)["input_ids"] for t in texts]


def _reset_peak_rss() -> None:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now


def _peak_rss_mb() -> float:
    hwm = [line for line in Path("/proc/self/status").read_text().splitlines()
           if line.startswith("VmHWM")][0]
    return int(hwm.split()[1]) / 1024


def measure(n: int, outlier_z: float | None) -> dict:
    """Seconds of one plain forward over `n` prompts (after a warm-up), seconds of the
    directions over the same prompts, and the peak RSS (MB) while computing the directions."""
    from interp.attacks.directions import DirectionsConfig, diff_in_means_prompts
    from interp.model.load import get_tokenizer, load_model
    from interp.scoring import pad_left

    m = load_model("smollm2", device="cpu")
    ids = prompts(get_tokenizer(m), n)
    half = len(ids) // 2
    cfg = DirectionsConfig(outlier_z=outlier_z, batch_size=16)

    @torch.no_grad()
    def plain():
        for s in range(0, len(ids), 16):
            t, mk = pad_left(ids[s:s + 16], 0, "cpu")
            m(t, attention_mask=mk, return_type=None)

    plain()
    t0 = time.perf_counter()
    plain()
    t_plain = time.perf_counter() - t0
    _reset_peak_rss()
    t0 = time.perf_counter()
    diff_in_means_prompts(m, ids[:half], ids[half:], cfg)
    t_dirs = time.perf_counter() - t0
    return {"n": n, "plain_s": t_plain, "directions_s": t_dirs,
            "directions_peak_rss_mb": _peak_rss_mb()}


def main(argv: list[str] | None = None) -> None:
    """Measure with the command line's settings; print the result and the process's peak RSS
    (MB) as one JSON line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.directions_child")
    p.add_argument("--n", type=int, required=True, help="prompts")
    p.add_argument("--outlier-z", type=float, default=None, help="DirectionsConfig.outlier_z")
    args = p.parse_args(argv)
    result = measure(args.n, args.outlier_z)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({**result, "peak_rss_mb": peak}))


if __name__ == "__main__":
    main()
