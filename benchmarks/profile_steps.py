"""Where one step of each expensive laptop stage spends its time, on the embedded SmolLM2-135M
(2 threads, float32, the laptop preset's shapes): forward, backward, optimizer for a LoRA step
(batch 8 x 80 tokens, rank 16, the seven matrices) and an NPO step (batch 8, block matrices);
a scoring batch (32 cloze questions); a GCG step (width 32, 6 questions) split into its gradient
and its candidate forward passes. Median of 3 after a warm-up, written to bench/profile-cpu.json.

    .venv/bin/python -m benchmarks.profile_steps     # from the repository checkout's root
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import Context
from benchmarks.training import train_batches
from interp.data.sources import load_source
from interp.model.load import load_model
from interp.model.lora import LoRAConfig, lora_adapters
from interp.protections.common import select_params
from interp.scoring import evaluate
from interp.training import fixed_threads, lm_loss


def median_time(fn, repeats: int = 3) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def phases(model, params, batch) -> dict:
    opt = torch.optim.AdamW(params, lr=1e-4)
    state = {}

    def fwd():
        state["loss"] = lm_loss(model, batch)

    def fwd_bwd():
        fwd()
        state["loss"].backward()

    def step():
        opt.step()

    with fixed_threads():
        f = median_time(fwd)
        fb = median_time(lambda: (fwd_bwd(), opt.zero_grad(set_to_none=True)))
        fwd_bwd()
        s = median_time(step)
        opt.zero_grad(set_to_none=True)
    return {"forward_s": f, "backward_s": fb - f, "optimizer_s": s, "step_s": fb + s}


def main() -> None:
    model = load_model("smollm2", device="cpu")
    ctx = Context(model, [], 3)
    batch = train_batches(ctx, n=1, batch=8, max_len=80)[0]
    out = {}
    with lora_adapters(model, LoRAConfig(rank=16, alpha=16.0)) as params:
        model.train()
        out["lora_step"] = phases(model, params, batch)
        model.eval()
    params, _ = select_params(model, "mlp")
    for p in params:
        p.requires_grad_(True)
    out["npo_like_step (mlp params)"] = phases(model, params, batch)
    for p in model.parameters():
        p.requires_grad_(False)
    qs = load_source("bank:capitals:1")[:32]
    out["score_32_questions_s"] = median_time(lambda: evaluate(model, qs, progress=False,
                                                               batch_size=32))
    from interp.attacks.gcg import GCGConfig, Objective, initial_prefix, question_slots
    from interp.model.load import get_tokenizer

    tok = get_tokenizer(model)
    cfg = GCGConfig(n_tokens=8, search_width=32)
    slots = [question_slots(tok, q, chat=False, fmt=None) for q in qs[:6]]
    obj = Objective(model, slots, cfg)
    prefix = torch.tensor(initial_prefix(tok, cfg))
    cands = prefix.repeat(32, 1)
    out["gcg_gradient_s"] = median_time(lambda: obj.token_gradient(prefix))
    out["gcg_32_candidates_s"] = median_time(lambda: obj.losses(cands))
    out["threads"] = torch.get_num_threads()
    Path("bench/profile-cpu.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
