"""What every protection shares: text encoding, frozen copies, parameter picks."""

from __future__ import annotations

import copy

import torch
from transformer_lens import HookedTransformer

from interp.model.hooks import select_weights
from interp.model.load import get_tokenizer
from interp.prompts import chat_text


def encode_texts(model: HookedTransformer, texts: list[str], max_len: int = 128) -> list[list[int]]:
    tok = get_tokenizer(model)
    return [tok(t)["input_ids"][:max_len] for t in texts]


def encode_pair(model: HookedTransformer, prompt: str, response: str, *, chat: bool,
                max_len: int = 160) -> tuple[list[int], int]:
    """Token ids of prompt + response, and where the response starts (loss counted from there)."""
    tok = get_tokenizer(model)
    if chat:
        context = chat_text(tok, prompt)
        ids_ctx = tok(context, add_special_tokens=False)["input_ids"]
        ids = ids_ctx + tok(response + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
    else:
        ids_ctx = tok(prompt)["input_ids"]
        ids = ids_ctx + tok(" " + response, add_special_tokens=False)["input_ids"]
    # too long: cut from the right, but never below half the budget of response tokens (the
    # prompt loses its start instead), so a long prompt cannot leave nothing to train on
    first = len(ids_ctx)
    keep = min(len(ids) - first, max_len // 2)
    if first + keep > max_len:
        cut = first + keep - max_len
        ids, first = ids[cut:], first - cut
    return ids[:max_len], first


def frozen_copy(model: HookedTransformer) -> HookedTransformer:
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    object.__setattr__(ref, "interp_tokenizer", get_tokenizer(model))
    return ref


def select_params(model: HookedTransformer, which: str,
                  layers: list[int] | None = None) -> tuple[list[torch.nn.Parameter], list[str]]:
    """Trainable parameters by name: "mlp_out" (W_out), "mlp", "attn_mlp" (every block weight);
    every other parameter is frozen."""
    picked = select_weights(model, which, layers)
    for p in model.parameters():
        p.requires_grad_(False)
    return [p for _, p in picked], [n for n, _ in picked]
