"""The one place that knows TransformerLens' hook and weight names, and the model's readout.

Hook points per block (`blocks.{layer}.hook_{point}`) and the weights that matter to the attacks
(the matrices that write to the residual stream, the MLP's neuron-indexed matrices) are named
here; a move to TransformerLens' `TransformerBridge` changes this file, not the attacks.
"""

from __future__ import annotations

from typing import Iterator

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.errors import InterpError

POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
EMBED_HOOK = "hook_embed"
MLP_IN = ("W_in", "W_gate")  # (d_model, d_mlp): neuron i is column i
MLP_OUT = "W_out"  # (d_mlp, d_model): neuron i is row i


def hook_name(layer: int, point: str = "resid_post") -> str:
    """The hook point's name in block `layer`, e.g. `blocks.3.hook_resid_post`; `point` is one of
    `POINTS`."""
    if point not in POINTS:
        raise InterpError(f"unknown hook point {point!r}; use one of {list(POINTS)}")
    return f"blocks.{layer}.hook_{point}"


def layer_hook_names(model: HookedTransformer, point: str = "resid_post") -> list[str]:
    """The hook point's name in every block, layer 0 first."""
    return [hook_name(i, point) for i in range(model.cfg.n_layers)]


def readout(model: HookedTransformer, resid: Float[Tensor, "... d_model"]
            ) -> Float[Tensor, "... vocab"]:
    """Residual stream -> logits: the final norm and the unembedding (the logit lens; at the
    last layer, the model's own output)."""
    return model.unembed(model.ln_final(resid))


def block_weight_names(model: HookedTransformer) -> list[str]:
    """Every attention and MLP weight matrix of the blocks (biases and norms excluded)."""
    names = [name for name, p in model.named_parameters()
             if name.startswith("blocks.") and (".attn." in name or ".mlp." in name)
             and p.ndim >= 2]
    if not names:
        raise InterpError("the model has no attention or MLP weight matrices")
    return names


def layer_of(weight_name: str) -> int:
    """The block index of a parameter name such as `blocks.3.mlp.W_out`."""
    return int(weight_name.split(".")[1])


def mlp_weight_name(layer: int, weight: str) -> str:
    """The parameter name of an MLP weight in block `layer`, e.g. `blocks.3.mlp.W_out`."""
    return f"blocks.{layer}.mlp.{weight}"


PARAM_GROUPS = {"mlp_out": ("mlp.W_out",), "mlp": ("mlp.",), "attn_mlp": ("mlp.", "attn.")}


def select_weights(model: HookedTransformer, group: str,
                   layers: list[int] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
    """Block weight matrices by group: "mlp_out" (W_out), "mlp", "attn_mlp" (every one)."""
    if group not in PARAM_GROUPS:
        raise InterpError(f"unknown parameter selection {group!r}; use one of "
                          f"{sorted(PARAM_GROUPS)}")
    return [(name, p) for name, p in model.named_parameters()
            if name.startswith("blocks.") and (layers is None or layer_of(name) in layers)
            and any(key in name for key in PARAM_GROUPS[group]) and p.ndim >= 2]


def residual_writers(model: HookedTransformer) -> Iterator[Tensor]:
    """Every weight and bias whose output is added to the residual stream, last dim d_model:
    the token (and absolute position) embedding, each attention W_O / b_O, each MLP W_out /
    b_out."""
    yield model.embed.W_E
    pos = getattr(model, "pos_embed", None)
    if pos is not None and getattr(pos, "W_pos", None) is not None:
        yield pos.W_pos
    for block in model.blocks:
        yield block.attn.W_O
        yield block.mlp.W_out
        for bias in (getattr(block.attn, "b_O", None), getattr(block.mlp, "b_out", None)):
            if bias is not None:
                yield bias
