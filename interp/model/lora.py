"""LoRA on TransformerLens weights (peft cannot wrap them: they are not `nn.Linear`).

Each adapted weight W (W_Q, W_K, W_V, W_O, W_in, W_gate, W_out; GQA's stored `_W_K`, `_W_V`) reads
as W + (alpha / rank) * A @ B, seen as a matrix from the weight's input to its output features
(W_Q: d_model -> heads x d_head; W_O: heads x d_head -> d_model). A starts random, B at zero, so
fresh adapters leave the model unchanged. Dropout drops adapter input features (one mask per
forward pass, shared by every token), rescaled by 1/(1-p), in training mode only.

Two implementations, equal to float noise (tested on each architecture family):
- `impl="hooks"` (the default where the architecture allows): each adapter adds its low-rank term
  beside the frozen matmul, x -> x @ W + scale * (x @ A) @ B, through forward hooks on the hook
  points the weight writes to (W_Q -> hook_q, W_K -> hook_k, W_V -> hook_v, W_in -> hook_pre or
  hook_pre_linear, W_gate -> hook_pre) and on the attention / MLP modules' outputs (W_O reads
  hook_z, W_out reads hook_post, each taken after any user hook there). The frozen weights never
  join the graph, so a backward pass computes no (d_in x d_out) weight gradient and no forward
  pass builds W + A B: on SmolLM2 a LoRA step is about 1.5x faster than the reference.
- `impl="weights"`: torch parametrizations W -> W + scale * A @ B (the reference, and the fallback
  for attention with split or per-head inputs, attention results, 4-bit weights, SoLU and
  mixture-of-experts MLPs).
The adapter terms are added before any user hook on the same hook point runs, so hooks, caches
and the logit lens see the adapted model either way. `lora_adapters(model, cfg)` adds adapters
and removes them on exit; `merge_lora` writes them into the weights for good (and removes them).
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
from interp.model.state import LoRAAdapters, find_state, set_state

ATTN_IN = ("W_Q", "W_K", "W_V", "_W_K", "_W_V")  # (heads, d_model, d_head)
ATTN_OUT = ("W_O",)  # (heads, d_head, d_model)
MLP = ("W_in", "W_gate", "W_out")  # (in, out)
ALL_TARGETS = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out")


@dataclass
class LoRAConfig:
    """LoRA adapter settings: rank, alpha (the term is scaled by alpha / rank), input-feature
    dropout, the adapted weights (`targets`), the blocks (`layers`; None: every block), the init
    seed and the implementation (`impl`)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ALL_TARGETS
    layers: tuple[int, ...] | None = None  # None: every block
    seed: int = 0
    impl: str = "auto"  # "hooks" | "weights" | "auto" (hooks where supported; see above)


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
        """The low-rank term scale * A @ B (dropout on A's rows in training mode), in the weight's
        TransformerLens layout."""
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

    def project(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """scale * dropout(x) @ A @ B: the adapter's term for inputs x (the hooks form)."""
        a = self.A
        if self.training and self.dropout > 0:
            keep = torch.bernoulli(torch.full((a.shape[0],), 1 - self.dropout,
                                              device=a.device, dtype=a.dtype))
            x = x * (keep / (1 - self.dropout)).to(x.dtype)
        return ((x.to(a.dtype) @ a) @ self.B) * self.scale

    def forward(self, weight: Tensor) -> Tensor:
        """The parametrization: `weight` + the delta, laid out as the stored weight is."""
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


def hooks_supported(model: HookedTransformer) -> str | None:
    """None when the hooks form applies to this model, else why not (the weights form is used)."""
    c = model.cfg
    for flag in ("use_split_qkv_input", "use_attn_in", "use_attn_result", "load_in_4bit"):
        if getattr(c, flag, False):
            return f"cfg.{flag} is set"
    if getattr(c, "num_experts", None):
        return "mixture-of-experts MLPs"
    if c.act_fn is not None and c.act_fn.endswith("_ln"):
        return "SoLU-style MLPs (a norm after the activation)"
    for block in model.blocks:
        if type(block.mlp).__name__ not in ("MLP", "GatedMLP"):
            return f"MLP type {type(block.mlp).__name__}"
    return None


def _add_term(delta: LoRADelta, source: dict, key: str):
    """A forward hook adding delta's term for the input `source[key]` to a hook point's output,
    shaped as that output (heads split; GQA's key/value heads repeated when TransformerLens
    ungroups them)."""

    def hook(module, args, out):
        term = delta.project(source[key]).to(out.dtype)
        if out.dim() == 4:  # (batch, pos, heads, d_head)
            term = einops.rearrange(term, "b p (h e) -> b p h e", h=delta.shape[0])
            if term.shape[2] != out.shape[2]:
                term = term.repeat_interleave(out.shape[2] // term.shape[2], dim=2)
        return out + term
    return hook


def _keep(source: dict, key: str, flatten: bool = False):
    def hook(module, args, out):
        source[key] = einops.rearrange(out, "b p h e -> b p (h e)") if flatten else out
    return hook


def _add_hooks(model: HookedTransformer, found: list, deltas: list[LoRADelta]) -> list:
    """Register the hooks form for every (module, weight) in `found`; returns the handles."""
    handles = []
    by_module: dict[nn.Module, dict[str, LoRADelta]] = {}
    for (module, name), delta in zip(found, deltas):
        by_module.setdefault(module, {})[name.lstrip("_")] = delta
    for module, ds in by_module.items():
        src: dict = {}
        late = []  # capture hooks that must run after any user hook on their hook point

        if hasattr(module, "hook_z"):  # attention
            def take_inputs(mod, args, kwargs, src=src, late=late):
                src["q"] = kwargs.get("query_input", args[0] if args else None)
                src["k"] = kwargs.get("key_input", args[1] if len(args) > 1 else None)
                src["v"] = kwargs.get("value_input", args[2] if len(args) > 2 else None)
                for point, handle in late:
                    point._forward_hooks.move_to_end(handle.id)
            handles.append(module.register_forward_pre_hook(take_inputs, with_kwargs=True))
            for w, point, key in (("W_Q", module.hook_q, "q"), ("W_K", module.hook_k, "k"),
                                  ("W_V", module.hook_v, "v")):
                if w in ds:
                    handles.append(point.register_forward_hook(_add_term(ds[w], src, key),
                                                               prepend=True))
            if "W_O" in ds:
                h = module.hook_z.register_forward_hook(_keep(src, "z", flatten=True))
                late.append((module.hook_z, h))
                handles.append(h)
                handles.append(module.register_forward_hook(_add_term(ds["W_O"], src, "z")))
        else:  # MLP
            gated = hasattr(module, "W_gate")

            def take_input(mod, args, src=src, late=late):
                src["x"] = args[0]
                for point, handle in late:
                    point._forward_hooks.move_to_end(handle.id)
            handles.append(module.register_forward_pre_hook(take_input))
            points = {"W_gate": module.hook_pre,
                      "W_in": module.hook_pre_linear if gated else module.hook_pre}
            for w, point in points.items():
                if w in ds:
                    handles.append(point.register_forward_hook(_add_term(ds[w], src, "x"),
                                                               prepend=True))
            if "W_out" in ds:
                h = module.hook_post.register_forward_hook(_keep(src, "post"))
                late.append((module.hook_post, h))
                handles.append(h)
                handles.append(module.register_forward_hook(_add_term(ds["W_out"], src, "post")))

        def forget(mod, args, out, src=src):
            src.clear()  # no activations kept alive between forward passes
        handles.append(module.register_forward_hook(forget))
    return handles


def add_lora(model: HookedTransformer, cfg: LoRAConfig) -> list[nn.Parameter]:
    """Attach adapters; returns their trainable parameters (A and B of each)."""
    if has_lora(model):
        raise InterpError("the model already has LoRA adapters; merge or remove them first")
    if cfg.impl not in ("auto", "hooks", "weights"):
        raise InterpError(f"LoRA impl must be 'auto', 'hooks' or 'weights', got {cfg.impl!r}")
    found = _targets(model, cfg)
    why_not = hooks_supported(model)
    if cfg.impl == "hooks" and why_not:
        raise InterpError(f"LoRA impl 'hooks' does not apply to this model ({why_not}); "
                          "use impl='weights'")
    impl = "weights" if cfg.impl == "weights" or why_not else "hooks"
    gen = torch.Generator().manual_seed(cfg.seed)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)  # only the adapters train
    names = {id(m): n for n, m in model.named_modules()}
    deltas, params = [], []
    for module, name in found:
        w = getattr(module, name)
        delta = LoRADelta(name, tuple(w.shape), cfg, gen, w.dtype, w.device)
        delta.train(model.training)
        deltas.append(delta)
        params += [delta.A, delta.B]
    state = LoRAAdapters(impl, {f"{names[id(m)]}.{n}": d for (m, n), d in zip(found, deltas)},
                         flags=flags)
    if impl == "weights":
        for (module, name), delta in zip(found, deltas):
            parametrize.register_parametrization(module, name, delta, unsafe=True)
    else:
        state.handles = _add_hooks(model, found, deltas)
        # the adapters follow model.train() / model.eval() (dropout) without being submodules
        def follow_mode(mod, args):
            for d in deltas:
                d.train(mod.training)
        state.handles.append(model.register_forward_pre_hook(follow_mode))
    set_state(model, lora=state)
    return params


def _adapters(model: HookedTransformer) -> LoRAAdapters | None:
    found = find_state(model)
    return found.lora if found is not None else None


def lora_deltas(model: HookedTransformer) -> dict[str, LoRADelta]:
    """The attached adapters by weight name ("blocks.0.attn.W_Q"; GQA: "..._W_K")."""
    state = _adapters(model)
    return dict(state.deltas) if state is not None else {}


def lora_impl(model: HookedTransformer) -> str | None:
    """The attached adapters' form ("hooks" or "weights"); None without adapters."""
    state = _adapters(model)
    return state.impl if state is not None else None


def has_lora(model: HookedTransformer) -> bool:
    """Whether adapters (or any other parametrization) are attached."""
    return (_adapters(model) is not None
            or any(parametrize.is_parametrized(m) for m in model.modules()))


def remove_lora(model: HookedTransformer, merge: bool = False) -> None:
    """Remove every adapter; with `merge`, the weights keep W + scale * A @ B."""
    state = _adapters(model)
    if state is not None:
        set_state(model, lora=None)
        for handle in state.handles:
            handle.remove()
        if merge and state.impl == "hooks":
            with torch.no_grad():
                for full, delta in state.deltas.items():
                    module_name, name = full.rsplit(".", 1)
                    w = getattr(model.get_submodule(module_name), name)
                    delta.eval()  # no dropout in the merged term
                    w.add_(delta.delta().to(w.dtype))  # in place: the layout is kept
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=merge)
    flags = state.flags if state is not None else {}
    for name, p in model.named_parameters():  # removal re-registers weights: match by name
        p.requires_grad_(flags.get(name, False))


def merge_lora(model: HookedTransformer) -> None:
    """Write the adapters into the weights for good (without dropout) and remove them; the model's
    train/eval mode is kept."""
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
