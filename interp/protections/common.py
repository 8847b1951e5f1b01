"""What every protection shares: text encoding, frozen copies, parameter picks.

Every trained sequence is tokenized as one text, as the scorer reads it, and the boundary between
prompt and response is found in those ids (the longest prefix they share with the prompt's own
ids): tokenizing the response on its own would give SentencePiece tokenizers a leading "▁" token
the scorer never sees."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from transformer_lens import HookedTransformer

from interp.errors import InterpError
from interp.model.hooks import select_weights
from interp.model.load import get_tokenizer
from interp.model.state import copy_model
from interp.prompts import chat_text, shared_prefix


def encode_texts(model: HookedTransformer, texts: list[str], max_len: int = 128) -> list[list[int]]:
    """Each text's token ids (the tokenizer's special tokens included), cut to the first
    `max_len`."""
    tok = get_tokenizer(model)
    return [tok(t)["input_ids"][:max_len] for t in texts]


def encode_pair(model: HookedTransformer, prompt: str, response: str, *, chat: bool,
                max_len: int = 160, system: str = "") -> tuple[list[int], int]:
    """Token ids of prompt + response, tokenized together, and where the response starts (loss
    counted from there). Too long: the prompt loses its start until the response has half the
    budget, then the response is cut from the right."""
    ids, first, _ = _pair(model, prompt, response, chat, max_len, system)
    return ids, first


def _pair(model, prompt: str, response: str, chat: bool, max_len: int,
          system: str = "") -> tuple[list[int], int, int]:
    if max_len < 2:
        raise InterpError(f"max_len must be at least 2 tokens, got {max_len}")
    tok = get_tokenizer(model)
    if chat:
        context = chat_text(tok, prompt, system)
        full = context + response + (tok.eos_token or "")
    else:
        context, full = prompt, prompt + " " + response
    ids_ctx = tok(context, add_special_tokens=not chat)["input_ids"]
    ids = tok(full, add_special_tokens=not chat)["input_ids"]
    first, n_full = shared_prefix(ids_ctx, ids), len(ids)
    keep = min(len(ids) - first, max_len // 2)
    if first + keep > max_len:
        cut = first + keep - max_len
        ids, first = ids[cut:], first - cut
    return ids[:max_len], first, n_full


@dataclass
class Encoding:
    """What `encode_pairs` did to the rows: kept, cut to `max_len`, dropped (no response token
    left), recorded in each protection's result."""

    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    max_len: int = 0

    def to_json(self) -> dict:
        """The counts as a JSON object."""
        return asdict(self)


def encode_pairs(model: HookedTransformer, pairs: Iterable[tuple[str, str, bool]], *,
                 max_len: int, what: str) -> tuple[list[tuple[list[int], int] | None], Encoding]:
    """`encode_pair` over (prompt, response, chat) triples: a row with no response token is None
    (dropped) and counted; nothing left raises one line naming `what`."""
    out, enc = [], Encoding(max_len=max_len)
    for prompt, response, chat in pairs:
        enc.rows += 1
        ids, first, n_full = _pair(model, prompt, response, chat, max_len)
        if first >= len(ids):
            enc.dropped += 1
            out.append(None)
            continue
        enc.truncated += n_full > len(ids)
        enc.kept += 1
        out.append((ids, first))
    if enc.rows and not enc.kept:
        raise InterpError(f"no {what} row keeps a response token within max_len {max_len}; "
                          "raise max_len or check the data")
    return out, enc


def frozen_copy(model: HookedTransformer) -> HookedTransformer:
    """A copy of the model in eval mode with every parameter frozen: the reference of NPO, DPO and
    RMU."""
    ref = copy_model(model)  # the same tokenizer object
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def select_params(model: HookedTransformer, which: str,
                  layers: list[int] | None = None) -> tuple[list[torch.nn.Parameter], list[str]]:
    """Trainable parameters by name: "mlp_out" (W_out), "mlp", "attn_mlp" (every block weight);
    every other parameter is frozen."""
    picked = select_weights(model, which, layers)
    for p in model.parameters():
        p.requires_grad_(False)
    return [p for _, p in picked], [n for n, _ in picked]
