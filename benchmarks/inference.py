"""Inference rows against a bare transformers model on the same weights: scoring a batch of
questions, and greedy generation."""

from __future__ import annotations

import statistics

import torch

from benchmarks.common import BenchResult, Context, row, spread, timed


def bench_scoring_vs_hf(ctx: Context) -> BenchResult:
    """Our scorer (hooked forward, last position unembedded) vs a bare transformers forward on
    the same left-padded batches (full logits, then the last position)."""
    from interp.scoring import EvalConfig, encode_all, evaluate, pad_left

    model, qs = ctx.model, ctx.questions
    hf = ctx.hf_model()
    enc = encode_all(model, qs, EvalConfig())
    order = sorted(range(len(enc)), key=lambda i: len(enc[i].ids))
    batches = [pad_left([enc[i].ids for i in order[s:s + ctx.batch_size]], 0, "cpu")
               for s in range(0, len(order), ctx.batch_size)]

    @torch.no_grad()
    def peer():
        preds = []
        for tokens, mask in batches:
            preds.append(hf(input_ids=tokens, attention_mask=mask).logits[:, -1].argmax(-1))
        return preds

    ours_t = timed(lambda: evaluate(model, qs, progress=False, batch_size=ctx.batch_size),
                   ctx.repeats)
    peer_t = timed(peer, ctx.repeats)
    ours, theirs = len(qs) / statistics.median(ours_t), len(qs) / statistics.median(peer_t)
    return row("scoring-vs-transformers", ours, theirs, "questions/s", ours / theirs, 0.9,
               ours_s=spread(ours_t), peer_s=spread(peer_t), n=len(qs))


def bench_generation(ctx: Context, new_tokens: int = 40) -> BenchResult:
    """Greedy generation with hooks (KV cache) vs HF generate, same prompt, 40 tokens."""
    from interp.prompts import chat_text
    from interp.scoring import generate_greedy

    tok = ctx.tokenizer
    ids = tok(chat_text(tok, "Write a short paragraph about the sea."),
              add_special_tokens=False)["input_ids"]
    hf = ctx.hf_model()
    hook = [("blocks.0.hook_resid_post", lambda x, hook: x)]

    def ours():
        return generate_greedy(ctx.model, [ids], max_new_tokens=new_tokens, hooks=hook)

    @torch.no_grad()
    def peer():
        return hf.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                           min_new_tokens=new_tokens, pad_token_id=tok.eos_token_id)

    ours_t, peer_t = timed(ours, ctx.repeats), timed(peer, ctx.repeats)
    same = ours()[0][:40] == tok.decode(peer()[0, len(ids):], skip_special_tokens=True)[:40]
    a, b = new_tokens / statistics.median(ours_t), new_tokens / statistics.median(peer_t)
    return row("generation-vs-hf-generate", a, b, "tokens/s", a / b, 0.5,
               ours_s=spread(ours_t), peer_s=spread(peer_t), same_text_prefix=same)
