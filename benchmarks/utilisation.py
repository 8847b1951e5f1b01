"""The scoring forward's FLOP/s against this machine's measured float32 matmul peak."""

from __future__ import annotations

import statistics

import torch

from benchmarks.common import BenchResult, Context, row, spread, timed


def matmul_peak(repeats: int = 5, size: int = 2048) -> float:
    """FLOP/s of the fastest of `repeats` float32 `size` x `size` matmuls."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    times = timed(lambda: a @ b, repeats)
    return 2 * size**3 / min(times)


def bench_utilisation(ctx: Context) -> BenchResult:
    """FLOP/s of the scoring forward (2 x weights used per token + attention) vs matmul peak."""
    from interp.scoring import EvalConfig, encode_all, evaluate

    model, qs = ctx.model, ctx.questions
    cfg = model.cfg
    enc = encode_all(model, qs, EvalConfig())
    tokens = sum(len(e.ids) for e in enc)
    per_layer = 2 * (cfg.d_model * cfg.n_heads * cfg.d_head * 2
                     + cfg.d_model * (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head * 2
                     + cfg.d_model * cfg.d_mlp * (3 if cfg.gated_mlp else 2))
    mean_len = tokens / len(enc)
    attn = 4 * cfg.n_layers * cfg.d_model * mean_len  # QK^T and AV per token, causal ~ avg len
    flops = tokens * (cfg.n_layers * per_layer + attn) + len(enc) * 2 * cfg.d_model * cfg.d_vocab
    times = timed(lambda: evaluate(model, qs, progress=False, batch_size=ctx.batch_size),
                  ctx.repeats)
    achieved = flops / statistics.median(times)
    peak = matmul_peak()
    return row("utilisation-vs-matmul-peak", achieved / 1e9, peak / 1e9, "GFLOP/s",
               achieved / peak, 0.5, tokens=tokens, flops=flops, ours_s=spread(times))
