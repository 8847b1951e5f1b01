"""What every protection shares: its data folder, text encoding, frozen copies, parameter picks."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from interp.errors import InterpError
from interp.models import get_tokenizer
from interp.prompts import chat_text


@dataclass
class ProtectData:
    """A built benchmark folder (`interp data build`) read for training."""

    folder: Path

    def corpus(self, name: str) -> list[str]:
        path = self.folder / f"{name}.jsonl"
        if not path.is_file():
            raise InterpError(f"{path} is missing; run `interp data build --out {self.folder}`")
        return [json.loads(line)["text"] for line in path.read_text().splitlines() if line]

    def preference(self) -> list[dict]:
        path = self.folder / "preference.jsonl"
        if not path.is_file():
            raise InterpError(f"{path} is missing; run `interp data build --out {self.folder}`")
        return [json.loads(line) for line in path.read_text().splitlines() if line]


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
    return ids[:max_len], len(ids_ctx)


def frozen_copy(model: HookedTransformer) -> HookedTransformer:
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    object.__setattr__(ref, "interp_tokenizer", get_tokenizer(model))
    return ref


def select_params(model: HookedTransformer, which: str,
                  layers: list[int] | None = None) -> tuple[list[torch.nn.Parameter], list[str]]:
    """Trainable parameters by name: "mlp_out" (W_out), "mlp", "attn_mlp" (every block weight)."""
    picks = {"mlp_out": ("mlp.W_out",), "mlp": ("mlp.",), "attn_mlp": ("mlp.", "attn.")}
    if which not in picks:
        raise InterpError(f"unknown parameter selection {which!r}; use one of {sorted(picks)}")
    params, names = [], []
    for name, p in model.named_parameters():
        if not name.startswith("blocks."):
            continue
        layer = int(name.split(".")[1])
        if layers is not None and layer not in layers:
            continue
        if any(key in name for key in picks[which]) and p.ndim >= 2:
            params.append(p)
            names.append(name)
    for p in model.parameters():
        p.requires_grad_(False)
    return params, names
