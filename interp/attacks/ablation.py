"""Removing a direction from the residual stream: per-layer unit directions (`LayerDirections`),
ablation hooks (a <- a - (a . r) r at chosen hook points; `ablated` removes them on exit) and the
equivalent weight edit (`orthogonalize_weights`). The directions attack and `ablation_sweep` read
it; it reads neither."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.errors import InterpError
from interp.model.hooks import hook_name, layer_hook_names, residual_writers


@dataclass
class LayerDirections:
    """Unit directions per layer and the statistics that made them.

    directions: (n_layers, d_model), unit norm; diff_norms: (n_layers,) norm of the raw
    difference; means_a, means_b: (n_layers, d_model) float64 means of the two sides.
    """

    directions: Float[Tensor, "n_layers d_model"]
    diff_norms: Float[Tensor, "n_layers"]  # noqa: F821
    means_a: Float[Tensor, "n_layers d_model"]
    means_b: Float[Tensor, "n_layers d_model"]
    hook: str
    variant: str

    def __post_init__(self) -> None:
        n, d = self.directions.shape
        assert self.diff_norms.shape == (n,) and self.means_a.shape == (n, d)


HOOKS = ("resid_post", "resid_pre", "attn_out", "mlp_out")  # where a direction is read / removed


def hook_names(model: HookedTransformer, hook: str) -> list[str]:
    """Every layer's hook point of kind `hook` (one of `HOOKS`)."""
    if hook not in HOOKS:
        raise InterpError(f"unknown hook {hook!r}; use one of {sorted(HOOKS)}")
    return layer_hook_names(model, hook)


def project_out(x: Tensor, direction: Tensor) -> Tensor:
    """x - (x . r) r for a unit r; a new tensor, the input is never edited in place."""
    r = direction.to(x.dtype)
    return x - einops.einsum(x, r, "... d, d -> ...")[..., None] * r


def _check(direction: Tensor) -> Tensor:
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise InterpError("cannot ablate a zero or NaN direction")
    return direction / norm


def ablation_hooks(model: HookedTransformer, dirs: LayerDirections | Tensor,
                   layers: Sequence[int] | None = None, hook: str | None = None) -> list:
    """Hooks removing each chosen layer's own direction at that layer's hook point."""
    table = dirs.directions if isinstance(dirs, LayerDirections) else dirs
    hook = hook or (dirs.hook if isinstance(dirs, LayerDirections) else "resid_post")
    names = hook_names(model, hook)
    layers = range(model.cfg.n_layers) if layers is None else layers
    hooks = []
    for layer in layers:
        if isinstance(dirs, LayerDirections) and dirs.diff_norms[layer] == 0:
            continue  # nothing differs at this layer: nothing to remove
        r = _check(table[layer]).to(model.cfg.device)
        hooks.append((names[layer], lambda x, hook, r=r: project_out(x, r)))
    return hooks


def ablate_everywhere_hooks(model: HookedTransformer, direction: Tensor) -> list:
    """Arditi-style: remove one direction from every block input and attention and MLP output."""
    r = _check(direction).to(model.cfg.device)
    fn = lambda x, hook: project_out(x, r)  # noqa: E731
    names = [hook_name(i, point) for i in range(model.cfg.n_layers)
             for point in ("resid_pre", "attn_out", "mlp_out")]
    return [(n, fn) for n in names]


@contextmanager
def ablated(model: HookedTransformer, hooks: list) -> Iterator[HookedTransformer]:
    """The model with ablation hooks on; they are removed on exit whatever happens."""
    with model.hooks(fwd_hooks=hooks):
        yield model


@torch.no_grad()
def orthogonalize_weights(model: HookedTransformer, direction: Tensor) -> None:
    """Weight edit equal to `ablate_everywhere_hooks`: W <- W - r r^T W for every matrix that
    writes to the residual stream (token and position embeddings, attention W_O, MLP W_out and
    their biases), in place."""
    r = _check(direction).to(model.cfg.device, model.cfg.dtype)
    for weight in residual_writers(model):
        weight.copy_(project_out(weight, r))
