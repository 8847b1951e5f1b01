"""SDPA against TransformerLens' eager attention: one forward and backward of the embedded model at
1,024 tokens, time and peak live tensor bytes (`interp.model.memory.LiveBytes`), in one run."""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import BenchResult, Context, row, spread


def _step(model, tokens) -> None:
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                             tokens[:, 1:].flatten())
    del logits
    loss.backward()


def _measure(model, tokens, repeats: int) -> tuple[list[float], int]:
    from interp.model.memory import LiveBytes
    from interp.training import fixed_threads

    times = []
    with fixed_threads():
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            _step(model, tokens)
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
        with LiveBytes().track_module(model) as mem:
            _step(model, tokens)
        model.zero_grad(set_to_none=True)
    return times, mem.peak


def bench_attention(ctx: Context, n_tokens: int = 1024) -> list[BenchResult]:
    """Two rows: seconds per forward+backward (ratio eager / SDPA) and peak MB (eager / SDPA),
    batch 1 of `n_tokens` tokens, gradients of every weight."""
    from interp.model.attention import eager_attention, use_sdpa

    model = ctx.model
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.d_vocab, (1, n_tokens), generator=g)
    use_sdpa(model)
    was = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        sdpa_t, sdpa_peak = _measure(model, tokens, ctx.repeats)
        with eager_attention(model):
            eager_t, eager_peak = _measure(model, tokens, ctx.repeats)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(was[n])
            p.grad = None
    detail = {"tokens": n_tokens, "batch": 1, "threads": torch.get_num_threads()}
    t_sdpa, t_eager = statistics.median(sdpa_t), statistics.median(eager_t)
    mb = 2**20
    return [row(f"attention-sdpa-vs-eager-time ({n_tokens} tokens)", t_sdpa, t_eager,
                "seconds per forward+backward (ratio: eager / sdpa)", t_eager / t_sdpa, 1.0,
                sdpa_s=spread(sdpa_t), eager_s=spread(eager_t), **detail),
            row(f"attention-sdpa-vs-eager-memory ({n_tokens} tokens)", sdpa_peak / mb,
                eager_peak / mb, "MB peak live tensors (ratio: eager / sdpa)",
                eager_peak / sdpa_peak, 1.2, **detail)]
