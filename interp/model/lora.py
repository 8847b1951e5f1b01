"""LoRA on TransformerLens weights (peft cannot wrap them: they are not `nn.Linear`).

Each adapted weight W (W_Q, W_K, W_V, W_O, W_in, W_gate, W_out; GQA's stored `_W_K`, `_W_V`) reads
as W + (alpha / rank) * A @ B, seen as a matrix from the weight's input to its output features
(W_Q: d_model -> heads x d_head; W_O: heads x d_head -> d_model). A starts random, B at zero, so
fresh adapters leave the model unchanged. Dropout drops adapter input features (one mask per
forward pass, shared by every token), rescaled by 1/(1-p), in training mode only.

The adapters are torch parametrizations, so every TransformerLens forward, hook and cache sees
them. `lora_adapters(model, cfg)` adds them and removes them on exit; `merge_lora` writes them into
the weights for good (and removes the adapters).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn
from torch.nn.utils import parametrize
from transformer_lens import HookedTransformer

from interp.errors import InterpError
from interp.model.layout import _ORDERS

ATTN_IN = ("W_Q", "W_K", "W_V", "_W_K", "_W_V")  # (heads, d_model, d_head)
ATTN_OUT = ("W_O",)  # (heads, d_head, d_model)
MLP = ("W_in", "W_gate", "W_out")  # (in, out)
ALL_TARGETS = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out")


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ALL_TARGETS
    layers: tuple[int, ...] | None = None  # None: every block
    seed: int = 0


class LoRADelta(nn.Module):
    """W -> W + scale * A @ B, reshaped to W's TransformerLens layout."""

    def __init__(self, name: str, shape: tuple[int, ...], cfg: LoRAConfig,
                 generator: torch.Generator, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.name = name
        self.shape = tuple(shape)
        if name in ATTN_IN or name in ATTN_OUT:
            heads, a, b = shape
            d_in, d_out = (a, heads * b) if name in ATTN_IN else (heads * a, b)
        else:
            d_in, d_out = shape
        self.dropout = cfg.dropout
        self.scale = cfg.alpha / cfg.rank
        bound = 1 / math.sqrt(d_in)  # kaiming-uniform(a=sqrt(5)), as peft initialises A
        a = (torch.rand(d_in, cfg.rank, generator=generator) * 2 - 1) * bound
        self.A = nn.Parameter(a.to(device=device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(cfg.rank, d_out, device=device, dtype=dtype))

    def delta(self) -> Tensor:
        a = self.A
        if self.training and self.dropout > 0:
            keep = torch.bernoulli(torch.full((a.shape[0], 1), 1 - self.dropout,
                                              device=a.device, dtype=a.dtype))
            a = a * keep / (1 - self.dropout)
        m: Float[Tensor, "d_in d_out"] = (a @ self.B) * self.scale
        if self.name in ATTN_IN:
            return einops.rearrange(m, "d (h e) -> h d e", h=self.shape[0])
        if self.name in ATTN_OUT:
            return einops.rearrange(m, "(h e) d -> h e d", h=self.shape[0])
        return m

    def forward(self, weight: Tensor) -> Tensor:
        delta = self.delta().to(weight.dtype)
        order = _ORDERS.get(self.name)
        if order is None or weight.dim() != len(order):
            return weight + delta
        # the sum laid out as `interp.model.layout` lays the weight out, so TransformerLens'
        # per-forward `.T.contiguous()` / rearrange of it is a no-op, not a copy
        inverse = [order.index(i) for i in range(len(order))]
        return (weight.permute(order) + delta.permute(order)).permute(inverse)


def _targets(model: HookedTransformer, cfg: LoRAConfig) -> list[tuple[nn.Module, str]]:
    if cfg.rank < 1:
        raise InterpError(f"LoRA rank must be at least 1, got {cfg.rank}")
    if not 0 <= cfg.dropout < 1:
        raise InterpError(f"LoRA dropout must be in [0, 1), got {cfg.dropout}")
    unknown = set(cfg.targets) - set(ALL_TARGETS)
    if unknown:
        raise InterpError(f"unknown LoRA targets {sorted(unknown)}; use {list(ALL_TARGETS)}")
    layers = range(model.cfg.n_layers) if cfg.layers is None else cfg.layers
    found = []
    for layer in layers:
        block = model.blocks[layer]
        for module in (block.attn, block.mlp):
            own = dict(module.named_parameters(recurse=False))
            for name in cfg.targets:
                stored = name if name in own else f"_{name}"  # GQA stores _W_K, _W_V
                if stored in own and own[stored].ndim >= 2:
                    found.append((module, stored))
    if not found:
        raise InterpError("no weights matched the LoRA targets")
    return found


def add_lora(model: HookedTransformer, cfg: LoRAConfig) -> list[nn.Parameter]:
    """Attach adapters; returns their trainable parameters (A and B of each)."""
    if has_lora(model):
        raise InterpError("the model already has LoRA adapters; merge or remove them first")
    gen = torch.Generator().manual_seed(cfg.seed)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    object.__setattr__(model, "_interp_grad_flags", flags)  # restored when adapters go
    for p in model.parameters():
        p.requires_grad_(False)  # only the adapters train
    params = []
    for module, name in _targets(model, cfg):
        w = getattr(module, name)
        delta = LoRADelta(name, tuple(w.shape), cfg, gen, w.dtype, w.device)
        parametrize.register_parametrization(module, name, delta, unsafe=True)
        params += [delta.A, delta.B]
    return params


def has_lora(model: HookedTransformer) -> bool:
    return any(parametrize.is_parametrized(m) for m in model.modules())


def remove_lora(model: HookedTransformer, merge: bool = False) -> None:
    """Remove every adapter; with `merge`, the weights keep W + scale * A @ B."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=merge)
    flags = model.__dict__.pop("_interp_grad_flags", {})
    for name, p in model.named_parameters():  # removal re-registers weights: match by name
        p.requires_grad_(flags.get(name, False))


def merge_lora(model: HookedTransformer) -> None:
    was_training = model.training
    model.eval()  # no dropout in the merged delta
    with torch.no_grad():
        remove_lora(model, merge=True)
    model.train(was_training)


@contextmanager
def lora_adapters(model: HookedTransformer, cfg: LoRAConfig) -> Iterator[list[nn.Parameter]]:
    """Adapters on the model inside the block; removed (not merged) on exit unless merged there."""
    params = add_lora(model, cfg)
    try:
        yield params
    finally:
        if has_lora(model):
            remove_lora(model, merge=False)
