"""Benchmark rows for the training side: one optimizer step (or one SNIP batch) of the
toolkit against the same computation written on the plain transformers model, both on the
embedded SmolLM2-135M weights, the same batches, threads, optimizer and seed.

- LoRA finetuning: our adapters and training loop vs `peft` (same rank, alpha, the seven target
  matrices, dropout 0, AdamW, gradient clipping 1.0);
- RMU: our step (forward stops after the steered block) vs the same loss on the transformers
  model as the WMDP reference code computes it (a full forward, the block output read by a
  forward hook);
- NPO: our step (only the counted positions unembedded) vs full logits and log-softmax;
- SNIP: neuron scores of one batch (|W_out * dL/dW_out| summed per neuron).

Each row also records the first step's loss on both sides (or the scores' agreement), so a speed
ratio never hides a different computation.
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.common import BenchResult, Context, row, spread, timed
from interp.model.state import copy_model

HF_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def train_batches(ctx: Context, n: int = 3, batch: int = 8, max_len: int = 128,
                  first: int = 1) -> list:
    """`n` batches of `batch` sequences of `max_len` tokens cut from the bundled unrelated
    texts laid end to end, loss from `first`."""
    from interp.data.unrelated import load_unrelated
    from interp.training import pack

    tok = ctx.tokenizer
    stream = [i for t in load_unrelated()[: 40 * n * batch] for i in tok(" " + t)["input_ids"]]
    seqs = [stream[k * max_len:(k + 1) * max_len] for k in range(n * batch)]
    if len(seqs[-1]) < max_len:
        raise RuntimeError("the bundled corpus is too short for the benchmark's batches")
    return [pack(seqs[i * batch:(i + 1) * batch], [first] * batch, 0, "cpu") for i in range(n)]


def hf_labels(batch) -> torch.Tensor:
    """transformers' labels for a `TokenBatch`: the token at t+1 where position t counts."""
    labels = torch.full_like(batch.tokens, -100)
    labels[:, 1:] = torch.where(batch.loss_mask[:, :-1].bool(), batch.tokens[:, 1:], -100)
    return labels


def hf_token_nll(hf, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed NLL and the per-token mean over the counted positions (full logits)."""
    logits = hf(input_ids=batch.tokens, attention_mask=batch.valid).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, batch.tokens[:, 1:, None])[..., 0]
    mask = batch.loss_mask[:, :-1].to(logp.dtype)
    nll = -(logp * mask)
    return nll.sum(1), nll.sum() / mask.sum()


def hf_block_output(hf, batch, layer: int) -> torch.Tensor:
    """Block `layer`'s output of a transformers model, read by a forward hook during a full
    forward (the WMDP reference RMU code's way); the hook is removed whatever happens."""
    seen = {}
    handle = hf.model.layers[layer].register_forward_hook(
        lambda mod, inp, out: seen.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    try:
        hf(input_ids=batch.tokens, attention_mask=batch.valid)
    finally:
        handle.remove()
    return seen["h"]


def optimizer_step(loss_fn, opt) -> None:
    """One step as both sides of a row take it: loss, backward, update, gradients cleared."""
    from interp.training import fixed_threads

    with fixed_threads():
        loss_fn().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _steps_per_second(times: list[float], steps: int) -> float:
    return steps / statistics.median(times)


# ------------------------------------------------------------------------------------- LoRA
def bench_lora_vs_peft(ctx: Context, rank: int = 16, alpha: float = 16.0) -> BenchResult:
    """LoRA finetuning steps per second: our adapters and training loop vs `peft` on the
    transformers model (same rank, alpha, target matrices, batches, AdamW, clipping)."""
    from interp.model.lora import LoRAConfig, lora_adapters
    from interp.training import TrainConfig, fixed_threads, lm_loss, train

    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return row("lora-finetune-vs-peft", None, None, "optimizer steps/s", None, 1.5,
                   skipped="peft is not installed: pip install -e '.[bench]'")
    batches = train_batches(ctx)
    steps = len(batches)
    model = ctx.model
    with lora_adapters(model, LoRAConfig(rank=rank, alpha=alpha)) as params:
        model.train()
        with torch.no_grad():
            ours_loss0 = float(lm_loss(model, batches[0]))

        def ours():
            train(params, lambda b: lm_loss(model, b), lambda s, m: batches[s % steps],
                  TrainConfig(steps=steps, lr=1e-4, warmup_frac=0.0, schedule="constant",
                              progress=False))

        ours_t = timed(ours, ctx.repeats)
        model.eval()
    hf = get_peft_model(ctx.hf_model(), LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                   target_modules=list(HF_TARGETS)))
    hf.train()
    trainable = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    with torch.no_grad():
        peer_loss0 = float(hf(input_ids=batches[0].tokens, attention_mask=batches[0].valid,
                              labels=hf_labels(batches[0])).loss)

    def peer():
        with fixed_threads():
            for b in batches:
                loss = hf(input_ids=b.tokens, attention_mask=b.valid, labels=hf_labels(b)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

    peer_t = timed(peer, ctx.repeats)
    a, b = _steps_per_second(ours_t, steps), _steps_per_second(peer_t, steps)
    return row("lora-finetune-vs-peft", a, b, "optimizer steps/s", a / b, 1.5,
               ours_s=spread(ours_t), peer_s=spread(peer_t), rank=rank, alpha=alpha,
               batch=8, tokens=128, first_loss={"ours": ours_loss0, "peft": peer_loss0})


# -------------------------------------------------------------------------------------- RMU
def bench_rmu_step(ctx: Context, layer: int = 7, alpha: float = 100.0) -> BenchResult:
    """RMU optimizer steps per second: our step (forward stops after the steered block) vs the
    same loss on the transformers model, the block output read by a forward hook."""
    from interp.protections.common import frozen_copy, select_params
    from interp.protections.rmu import rmu_loss

    fb, rb, _ = train_batches(ctx, first=0)
    model = copy_model(ctx.model)
    frozen = frozen_copy(ctx.model)
    params, _ = select_params(model, "mlp_out", [layer - 2, layer - 1, layer])
    for p in params:
        p.requires_grad_(True)  # as the training loop does
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(model.cfg.d_model, generator=gen)
    target = 6.5 * u / u.norm()
    opt = torch.optim.AdamW(params, lr=5e-5)

    def ours():
        optimizer_step(lambda: rmu_loss(model, frozen, fb, rb, layer, target, alpha)[0], opt)

    with torch.no_grad():
        ours_loss0 = float(rmu_loss(model, frozen, fb, rb, layer, target, alpha)[0])
    ours_t = timed(ours, ctx.repeats)

    hf = ctx.hf_model()
    hf_frozen = ctx.hf_model()
    for p in hf.parameters():
        p.requires_grad_(False)
    hf_params = [hf.model.layers[i].mlp.down_proj.weight for i in (layer - 2, layer - 1, layer)]
    for p in hf_params:
        p.requires_grad_(True)
    hf_opt = torch.optim.AdamW(hf_params, lr=5e-5)

    def peer_loss():
        fmask = fb.valid.unsqueeze(-1).float()
        rmask = rb.valid.unsqueeze(-1).float()
        h_f = hf_block_output(hf, fb, layer)
        forget = (((h_f - target) ** 2) * fmask).sum() / (fmask.sum() * h_f.shape[-1])
        h_r = hf_block_output(hf, rb, layer)
        with torch.no_grad():
            h_r0 = hf_block_output(hf_frozen, rb, layer)
        return forget + alpha * (((h_r - h_r0) ** 2) * rmask).sum() / (rmask.sum() * h_r.shape[-1])

    def peer():
        optimizer_step(peer_loss, hf_opt)

    with torch.no_grad():
        peer_loss0 = float(peer_loss())
    peer_t = timed(peer, ctx.repeats)
    a, b = 1 / statistics.median(ours_t), 1 / statistics.median(peer_t)
    return row("rmu-step-vs-transformers", a, b, "optimizer steps/s", a / b, 1.0,
               ours_s=spread(ours_t), peer_s=spread(peer_t), layer=layer,
               first_loss={"ours": ours_loss0, "transformers": peer_loss0},
               peer_does="full forward, block output read by a forward hook (as the WMDP "
                    "reference RMU code)")


# -------------------------------------------------------------------------------------- NPO
def bench_npo_step(ctx: Context, beta: float = 0.1) -> BenchResult:
    """NPO optimizer steps per second: our step (only counted positions unembedded) vs full
    logits and log-softmax on the transformers model."""
    from interp.protections.common import select_params
    from interp.protections.npo import npo_loss
    from interp.training import lm_loss, sequence_nll

    fb, rb, _ = train_batches(ctx, first=64)  # "answers": the second half of each text
    model = copy_model(ctx.model)
    params, _ = select_params(model, "attn_mlp")
    for p in params:
        p.requires_grad_(True)  # as the training loop does
    with torch.no_grad():
        ref = sequence_nll(model, fb)
    opt = torch.optim.AdamW(params, lr=1e-5)

    def our_loss():
        return npo_loss(sequence_nll(model, fb), ref, beta) + lm_loss(model, rb)

    def ours():
        optimizer_step(our_loss, opt)

    with torch.no_grad():
        ours_loss0 = float(our_loss())
    ours_t = timed(ours, ctx.repeats)

    hf = ctx.hf_model()
    for name, p in hf.named_parameters():
        p.requires_grad_(any(f".{t}." in name for t in HF_TARGETS))
    hf_params = [p for p in hf.parameters() if p.requires_grad]
    hf_opt = torch.optim.AdamW(hf_params, lr=1e-5)
    with torch.no_grad():
        hf_ref = hf_token_nll(hf, fb)[0]

    def peer_loss():
        return npo_loss(hf_token_nll(hf, fb)[0], hf_ref, beta) + hf_token_nll(hf, rb)[1]

    def peer():
        optimizer_step(peer_loss, hf_opt)

    with torch.no_grad():
        peer_loss0 = float(peer_loss())
    peer_t = timed(peer, ctx.repeats)
    a, b = 1 / statistics.median(ours_t), 1 / statistics.median(peer_t)
    return row("npo-step-vs-transformers", a, b, "optimizer steps/s", a / b, 1.0,
               ours_s=spread(ours_t), peer_s=spread(peer_t),
               trainable_params=sum(p.numel() for p in params),
               first_loss={"ours": ours_loss0, "transformers": peer_loss0})


# ------------------------------------------------------------------------------------- SNIP
def bench_snip(ctx: Context) -> BenchResult:
    """SNIP neuron scores of one batch per second, ours vs |W_out * dL/dW_out| summed per neuron
    on the transformers model; records how far the two sets of scores differ."""
    from interp.attacks.prune import neuron_scores, snip_scores
    from interp.model.hooks import MLP_OUT, mlp_weight_name
    from interp.training import fixed_threads

    batch = train_batches(ctx, n=1, first=96)[0]
    model = ctx.model
    names = [mlp_weight_name(i, MLP_OUT) for i in range(model.cfg.n_layers)]
    ours_out = {}

    def ours():
        ours_out["s"] = neuron_scores(model, snip_scores(model, [batch], names=names))

    ours_t = timed(ours, ctx.repeats)
    hf = ctx.hf_model()
    for p in hf.parameters():
        p.requires_grad_(False)
    downs = [layer.mlp.down_proj.weight for layer in hf.model.layers]
    for w in downs:
        w.requires_grad_(True)
    labels = hf_labels(batch)
    peer_out = {}

    def peer():
        with fixed_threads():
            hf.zero_grad(set_to_none=True)
            hf(input_ids=batch.tokens, attention_mask=batch.valid, labels=labels).loss.backward()
            # down_proj.weight is (d_model, d_mlp): a neuron is a column
            peer_out["s"] = torch.stack([(w.detach().abs() * w.grad.abs()).sum(0) for w in downs])

    peer_t = timed(peer, ctx.repeats)
    ours_s, peer_s = ours_out["s"].double(), peer_out["s"].double()
    rel = float((ours_s - peer_s).abs().max() / peer_s.abs().max())
    a, b = 1 / statistics.median(ours_t), 1 / statistics.median(peer_t)
    return row("snip-batch-vs-transformers", a, b, "batches/s", a / b, 1.0,
               ours_s=spread(ours_t), peer_s=spread(peer_t),
               max_rel_difference_of_scores=rel)
