"""Attention through `torch.nn.functional.scaled_dot_product_attention` when nothing reads the
pattern.

TransformerLens' attention forward computes every layer's scores and pattern as (batch, heads,
query, key) tensors, masks and softmaxes them with separate ops, and keeps them all for the
backward pass: O(n^2) memory per layer at n tokens. `use_sdpa(model)` gives each attention module
of the model a per-instance forward that mirrors TransformerLens 3.9's `AbstractAttention.forward`
line for line (projections, hook_q/hook_k/hook_v, QK norms, QKV clipping, the key/value cache,
rotary embeddings with the padding-aware positions and hook_rot_q/hook_rot_k, log-n scaling, the
output projection, hook_z and hook_result) and replaces only its scores -> mask -> softmax ->
pattern -> z part by one fused SDPA call (flash / memory-efficient kernels that never store the
pattern). The block around it (hook_attn_in, hook_q_input, hook_attn_out, ...) is untouched.
Every model the toolkit builds (`interp.model.load`, `interp.model.shapes.random_model`) gets it.

The fast path runs for a call only when all of these hold, otherwise that call runs
TransformerLens' own (eager) forward, unchanged:

- no hook reads the pattern: the module's `hook_attn_scores` and `hook_pattern` HookPoints have
  no forward, forward-pre, backward or backward-pre hooks (PyTorch's dicts, and TransformerLens'
  own `fwd_hooks` / `bwd_hooks` lists). `run_with_cache`, `model.hooks(...)`, `add_hook` and
  `cache_all` all attach such hooks, so a cache or hook that asks for `pattern` / `attn_scores`
  sees exactly the eager values; asking only for other names keeps the fast path. Global module
  hooks (`register_module_forward_hook`, as used by profilers such as FlopCounterMode) do not
  count: force eager with `eager_attention` to see patterns through one;
- the module is not inside an `eager_attention(model)` block;
- the model has no attention-score soft-capping (Gemma 2's `attn_scores_soft_cap` > 0), no
  attention sinks (GPT-OSS), no 4-bit weights, and its positional embedding is "standard",
  "rotary" or "shortformer" (ALiBi and T5's relative bias stay eager), and the call passes no
  `additive_attention_mask` or `position_bias` (encoders, T5);
- the module is a plain `Attention` or `GroupedQueryAttention` (subclasses stay eager);
- the installed TransformerLens is a tested version (`TESTED_TRANSFORMER_LENS`); otherwise
  `use_sdpa` warns once and leaves the model eager.

What the fast path keeps equal to eager: the scale (SDPA gets `scale=1 / attn_scale`, so
`use_attn_scale`, a custom `attn_scale` and `scale_attn_by_inverse_layer_idx` all hold), the
causal mask (including a cache offset and local/sliding-window layers: the mask is TransformerLens'
own `_make_causal_mask`), the padding mask from `attention_mask` (left padding), bidirectional
attention, and grouped-query attention (keys and values repeat-interleaved over the query heads as
TransformerLens does). A query row whose keys are all masked (a left-padding position) gives NaN
in the eager softmax, which TransformerLens replaces by a zero pattern, so its z is 0; the fast
path lets such rows attend to every key (no NaN, whichever SDPA kernel runs) and then sets their z
to 0, so values and gradients equal eager there too. A hook on hook_z may edit z in place, as in
eager (SDPA saves its output for the backward pass, so hooked z is a copy). With a padding mask
the layers of a forward pass share one additive (batch, 1, query, key) mask, O(batch n^2) memory
once rather than eager's O(batch heads n^2) several times per layer. Tensors keep the
model's dtype (TransformerLens 3.9 computes scores and softmax in the query's dtype too; SDPA
kernels accumulate in float32, so half-precision results differ by rounding only).

Switches: `use_sdpa(model, enabled=True)` installs (idempotent) or removes the fast path;
`eager_attention(model)` forces eager inside a `with` block and always restores; the environment
variable `INTERP_ATTENTION` = `sdpa` (default) | `eager` is read when a model is built
(`install_default`). `interp bench attention` (`benchmarks/attention.py`) times one
forward+backward, eager against SDPA.
"""

from __future__ import annotations

import os
import re
import warnings
import weakref
from contextlib import contextmanager
from typing import Iterator, Optional

import einops
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ENV = "INTERP_ATTENTION"
MODES = ("sdpa", "eager")
# [low, high): the TransformerLens versions whose AbstractAttention.forward this module mirrors
# (checked line by line against 3.9.0). Widen only after re-reading that forward and re-running
# tests/test_sdpa_attention.py.
TESTED_TRANSFORMER_LENS = ((3, 9), (3, 10))
_POSITIONAL = ("standard", "rotary", "shortformer")
_PATTERN_POINTS = ("hook_attn_scores", "hook_pattern")
_OLMO = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")

_FORCED: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()
_warned: set[str] = set()


# ------------------------------------------------------------------------------------ versions
def transformer_lens_version() -> str:
    """The installed TransformerLens version string ("" when it cannot be read)."""
    try:
        from importlib.metadata import version

        return version("transformer-lens")
    except Exception:  # not installed as a distribution (a source checkout): unknown
        import transformer_lens

        return str(getattr(transformer_lens, "__version__", ""))


def version_supported(version: str | None = None) -> bool:
    """Whether `version` (default: the installed one) lies in `TESTED_TRANSFORMER_LENS`."""
    version = transformer_lens_version() if version is None else version
    found = re.match(r"\s*(\d+)\.(\d+)", version or "")
    if not found:
        return False
    low, high = TESTED_TRANSFORMER_LENS
    return low <= (int(found.group(1)), int(found.group(2))) < high


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# ------------------------------------------------------------------------------------ switches
def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` the fast path can serve: exact `Attention` and
    `GroupedQueryAttention` instances (the model itself when it is one)."""
    from transformer_lens.components import Attention, GroupedQueryAttention

    return [m for m in model.modules() if type(m) in (Attention, GroupedQueryAttention)]


class _SDPAForward:
    """The per-instance `forward` `use_sdpa` installs: `sdpa_forward` bound to its module (a
    plain class, so that deep copies and pickles of the model keep it, bound to the copy)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, *args, **kwargs) -> Tensor:
        return sdpa_forward(self.module, *args, **kwargs)

    def __repr__(self) -> str:
        return "<interp SDPA attention forward>"


def is_installed(module: nn.Module) -> bool:
    """Whether `module` (an attention module) has the SDPA forward installed."""
    return isinstance(module.__dict__.get("forward"), _SDPAForward)


def use_sdpa(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Install (`enabled`) or remove the SDPA forward on every attention module of `model`;
    idempotent, returns `model`. With an untested TransformerLens version it warns once and
    leaves (makes) the model eager. A module whose `forward` someone else replaced is left alone."""
    if enabled and not version_supported():
        low, high = (".".join(map(str, v)) for v in TESTED_TRANSFORMER_LENS)
        _warn_once("version", f"interp: SDPA attention is tested with TransformerLens >={low},"
                   f"<{high}; found {transformer_lens_version() or 'unknown'}: attention runs "
                   "eager (TransformerLens' own forward)")
        enabled = False
    for module in attention_modules(model):
        own = module.__dict__.get("forward")
        if enabled and own is None:
            module.forward = _SDPAForward(module)
        elif not enabled and isinstance(own, _SDPAForward):
            del module.forward
    return model


def attention_mode() -> str:
    """`INTERP_ATTENTION` ("sdpa" when unset or empty); a `InterpError` for other values."""
    mode = os.environ.get(ENV, "").strip().lower() or "sdpa"
    if mode not in MODES:
        from interp.errors import InterpError

        raise InterpError(f"{ENV}={os.environ.get(ENV)!r}: use one of {', '.join(MODES)}")
    return mode


def install_default(model: nn.Module) -> nn.Module:
    """What model construction calls: `use_sdpa(model, INTERP_ATTENTION != "eager")`."""
    return use_sdpa(model, attention_mode() == "sdpa")


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Run every attention module of `model` eager inside the block (nestable); the previous
    state comes back on exit, also on an exception. Copies made inside are not forced."""
    modules = attention_modules(model)
    for module in modules:
        _FORCED[module] = _FORCED.get(module, 0) + 1
    try:
        yield model
    finally:
        for module in modules:
            depth = _FORCED.get(module, 0) - 1
            if depth > 0:
                _FORCED[module] = depth
            else:
                _FORCED.pop(module, None)


def _has_hooks(point: nn.Module) -> bool:
    return bool(point._forward_hooks or point._forward_pre_hooks or point._backward_hooks
                or point._backward_pre_hooks or getattr(point, "fwd_hooks", None)
                or getattr(point, "bwd_hooks", None))


def eager_reason(module: nn.Module, additive_attention_mask: Optional[Tensor] = None,
                 position_bias: Optional[Tensor] = None) -> str | None:
    """Why a call of attention `module` (with these extra inputs) would run eager; None when the
    SDPA path runs (given it is installed)."""
    cfg = module.cfg
    if module in _FORCED:
        return "inside eager_attention"
    for name in _PATTERN_POINTS:
        point = getattr(module, name, None)
        if point is not None and _has_hooks(point):
            return f"hooks on {name}"
    if cfg.attn_scores_soft_cap is not None and cfg.attn_scores_soft_cap > 0:
        return "attention soft-capping"
    if cfg.positional_embedding_type not in _POSITIONAL:
        return f"positional embedding {cfg.positional_embedding_type!r}"
    if getattr(cfg, "use_attention_sinks", False):
        return "attention sinks"
    if getattr(cfg, "load_in_4bit", False):
        return "4-bit weights"
    if additive_attention_mask is not None:
        return "additive attention mask"
    if position_bias is not None:
        return "position bias"
    return None


# ------------------------------------------------------------------------------------- forward
def sdpa_forward(
    self: nn.Module,
    query_input: Tensor,
    key_input: Tensor,
    value_input: Tensor,
    past_kv_cache_entry=None,
    additive_attention_mask: Optional[Tensor] = None,
    attention_mask: Optional[Tensor] = None,
    position_bias: Optional[Tensor] = None,
) -> Tensor:
    """`AbstractAttention.forward` (TransformerLens 3.9) with the pattern computed inside SDPA;
    TransformerLens' own forward whenever `eager_reason` names a reason."""
    if eager_reason(self, additive_attention_mask, position_bias) is not None:
        return type(self).forward(self, query_input, key_input, value_input,
                                  past_kv_cache_entry=past_kv_cache_entry,
                                  additive_attention_mask=additive_attention_mask,
                                  attention_mask=attention_mask, position_bias=position_bias)
    cfg = self.cfg
    q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)

    # --- from here to the scores: AbstractAttention.forward, unchanged
    if cfg.original_architecture in _OLMO:
        assert self.q_norm is not None and self.k_norm is not None
        q = einops.rearrange(
            self.q_norm(einops.rearrange(
                q, "batch pos head_index d_head -> batch pos (head_index d_head)")),
            "batch kv_pos (head_index d_head) -> batch kv_pos head_index d_head",
            head_index=q.shape[2],
        )
        k = einops.rearrange(
            self.k_norm(einops.rearrange(
                k, "batch pos head_index d_head -> batch pos (head_index d_head)")),
            "batch kv_pos (head_index d_head) -> batch kv_pos head_index d_head",
            head_index=k.shape[2],
        )
    if cfg.clip_qkv is not None:
        q = q.clamp(min=-cfg.clip_qkv, max=cfg.clip_qkv)
        k = k.clamp(min=-cfg.clip_qkv, max=cfg.clip_qkv)
        v = v.clamp(min=-cfg.clip_qkv, max=cfg.clip_qkv)
    if past_kv_cache_entry is not None:
        kv_cache_pos_offset = past_kv_cache_entry.past_keys.size(1)
        k, v = past_kv_cache_entry.append(k, v)
    else:
        kv_cache_pos_offset = 0
    if cfg.positional_embedding_type == "rotary":
        q = self.hook_rot_q(self.apply_rotary(q, kv_cache_pos_offset, attention_mask))
        k = self.hook_rot_k(self.apply_rotary(k, 0, attention_mask))  # keys are cached: no offset
    if cfg.use_logn_attn and not self.training:
        q = self._apply_logn_scaling(q, kv_cache_pos_offset)

    # --- scores, mask, softmax, pattern, z: one SDPA call
    z = self.hook_z(_sdpa_z(self, q, k, v, kv_cache_pos_offset, attention_mask))

    # --- the output projection: AbstractAttention.forward, unchanged (4-bit weights run eager)
    if not cfg.use_attn_result:
        w = einops.rearrange(
            self.W_O, "head_index d_head d_model -> d_model (head_index d_head)"
        ).contiguous()
        if w.device != z.device:
            w = w.to(z.device)
        b_O: Tensor = self.b_O
        if b_O.device != z.device:
            b_O = b_O.to(z.device)
        if z.dtype != w.dtype:
            z = z.to(w.dtype)
        z = z.reshape(z.shape[0], z.shape[1], cfg.d_head * cfg.n_heads)
        if z.device.type == "mps":  # TransformerLens' workaround for pytorch#161640
            return torch.matmul(z, w.T) + b_O
        return F.linear(z, w, b_O)
    w = einops.rearrange(self.W_O, "head_index d_head d_model -> 1 1 head_index d_head d_model")
    if w.device != z.device:
        w = w.to(z.device)
    if z.dtype != w.dtype:
        z = z.to(w.dtype)
    z = einops.rearrange(z, "batch pos head_index d_head -> batch pos head_index d_head 1")
    result = self.hook_result((z * w).sum(-2))  # [batch, pos, head_index, d_model]
    return einops.reduce(result, "batch position index model->batch position model", "sum") \
        + self.b_O


def _sdpa_z(self: nn.Module, q: Tensor, k: Tensor, v: Tensor, offset: int,
            attention_mask: Optional[Tensor]) -> Tensor:
    """z [batch, query_pos, head_index, d_head] as the eager pattern @ v gives it."""
    from transformer_lens.components import GroupedQueryAttention

    if isinstance(self, GroupedQueryAttention) and not self.cfg.ungroup_grouped_query_attention:
        k = torch.repeat_interleave(k, dim=2, repeats=self.repeat_kv_heads)
        v = torch.repeat_interleave(v, dim=2, repeats=self.repeat_kv_heads)
    device, dtype = v.device, v.dtype  # eager: pattern.to(device=v.device, dtype=v.dtype)
    q_len, k_len = q.shape[1], k.shape[1]
    mask: Optional[Tensor] = None
    valid: Optional[Tensor] = None
    is_causal = False
    if (self._attention_dir_override or self.cfg.attention_dir) == "causal":
        if q_len + offset != k_len:
            raise ValueError(
                f"query_ctx_length {q_len} + past_kv_pos_offset {offset} != key_ctx_length "
                f"{k_len} - you likely have a bug.")
        if attention_mask is None and self.attn_type == "global" and offset == 0:
            is_causal = True  # SDPA's causal mask is top-left aligned: only without an offset
        elif attention_mask is None:
            mask = self._make_causal_mask(query_ctx_length=q_len, key_ctx_length=k_len,
                                          past_kv_pos_offset=offset, device=device)
        else:
            mask, valid = _padding_mask(self, attention_mask, q_len, k_len, offset, device, dtype)
    scale = 1.0 / float(self.attn_scale)
    out = F.scaled_dot_product_attention(
        q.to(device=device, dtype=dtype).transpose(1, 2),
        k.to(device=device, dtype=dtype).transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask, is_causal=is_causal, scale=scale,
    )  # [batch, head_index, query_pos, d_head]
    if valid is not None:
        out = out.masked_fill(~valid, 0.0)
    elif _has_hooks(self.hook_z):
        # SDPA keeps its output for the backward pass (eager's matmul does not): a hook that
        # edits z in place (a head ablation) must get a copy
        out = out.clone()
    return out.transpose(1, 2)


# attention_mask -> {key: (additive mask, valid rows)}: the layers of one forward pass share one
# mask tensor (SDPA saves its mask for the backward pass; a bool mask it converts per call)
_MASKS = None


def _padding_mask(self: nn.Module, attention_mask: Tensor, q_len: int, k_len: int, offset: int,
                  device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """TransformerLens' causal mask & padding mask as an additive (batch, 1, query, key) mask in
    `dtype` (0 kept, -inf masked), rows with no key left opened to every key, and (batch, 1,
    query, 1) `valid`: which rows had a key. Cached per `attention_mask` tensor (dropped with it),
    so all layers of a forward pass share one mask."""
    global _MASKS
    from torch.utils.weak import WeakIdKeyDictionary

    if _MASKS is None:
        _MASKS = WeakIdKeyDictionary()
    key = (attention_mask._version, q_len, k_len, offset, self.attn_type,
           self.cfg.window_size if self.attn_type == "local" else None, device, dtype,
           torch.is_inference_mode_enabled())
    entries = _MASKS.setdefault(attention_mask, {})
    if key not in entries:
        keep = self._make_causal_mask(query_ctx_length=q_len, key_ctx_length=k_len,
                                      past_kv_pos_offset=offset, device=device)
        keep = keep & attention_mask.to(device).bool()[:, None, None, :]
        # rows with no key left (left-padding queries): eager's pattern is 0 there
        valid = keep.any(dim=-1, keepdim=True)
        additive = torch.zeros(keep.shape, dtype=dtype, device=device)
        additive.masked_fill_(~(keep | ~valid), float("-inf"))
        if len(entries) >= 4:
            entries.pop(next(iter(entries)))
        entries[key] = (additive, valid)
    return entries[key]
