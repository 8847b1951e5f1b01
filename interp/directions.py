"""Difference-in-means directions per block, their ablation hooks and the equivalent weight edit.

Variants (the paper's and the official code's):
- two models, same prompts: mean(unlearned) - mean(original), per layer (the paper's main one);
- one model, two prompt sets: mean(forget) - mean(retain or unrelated);
- the first principal component of the activations (or of the paired differences).

Means accumulate in float64 and stream over batches, so memory does not grow with the number of
prompts; dropping outlier tokens (z-score of the distance to the mean above `outlier_z`) takes a
second pass.
"""

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
from interp.evaluate import pad_left

HOOKS = {"resid_post": "hook_resid_post", "resid_pre": "hook_resid_pre",
         "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}


@dataclass
class DirectionsConfig:
    hook: str = "resid_post"  # the block output by default
    positions: str = "all"  # "all" tokens after skipping `skip_first`, or "last"
    skip_first: int = 1
    outlier_z: float | None = 3.0
    batch_size: int = 16


@dataclass
class Directions:
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


def _hook_names(model: HookedTransformer, hook: str) -> list[str]:
    if hook not in HOOKS:
        raise InterpError(f"unknown hook {hook!r}; use one of {sorted(HOOKS)}")
    return [f"blocks.{i}.{HOOKS[hook]}" for i in range(model.cfg.n_layers)]


def _token_mask(mask: Tensor, cfg: DirectionsConfig) -> Tensor:
    """Which positions count: left-padded batches, first `skip_first` real tokens skipped."""
    if cfg.positions == "last":
        keep = torch.zeros_like(mask, dtype=torch.bool)
        keep[:, -1] = True
        return keep
    if cfg.positions != "all":
        raise InterpError(f"positions must be 'all' or 'last', got {cfg.positions!r}")
    rank = mask.cumsum(-1)  # 1 at the first real token
    return (mask.bool()) & (rank > cfg.skip_first)


@torch.no_grad()
def stream_activations(model: HookedTransformer, prompts: Sequence[list[int]],
                       cfg: DirectionsConfig) -> Iterator[Float[Tensor, "n_layers tokens d"]]:
    """Yield, batch by batch, the chosen hook's activations at the counted positions."""
    names = _hook_names(model, cfg.hook)
    pad_id = 0
    for start in range(0, len(prompts), cfg.batch_size):
        tokens, mask = pad_left(prompts[start:start + cfg.batch_size], pad_id, model.cfg.device)
        _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names,
                                        stop_at_layer=None, return_type=None)
        keep = _token_mask(mask, cfg)
        yield torch.stack([cache[n][keep] for n in names])  # (n_layers, tokens, d)
        del cache


@torch.no_grad()
def streaming_mean(model, prompts, cfg: DirectionsConfig,
                   center: Tensor | None = None, max_dist: Tensor | None = None) -> dict:
    """Float64 per-layer mean, and the mean / second moment of the distance to `center`."""
    total, count = None, None
    dist_sum, dist_sq = None, None
    for acts in stream_activations(model, prompts, cfg):
        a = acts.double()
        keep = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device)
        if center is not None:
            dist = (a - center[:, None, :]).norm(dim=-1)  # (n_layers, tokens)
            if max_dist is not None:
                keep = dist <= max_dist[:, None]
            dist_sum = (dist * keep).sum(1) if dist_sum is None else dist_sum + (dist * keep).sum(1)
            sq = (dist**2 * keep).sum(1)
            dist_sq = sq if dist_sq is None else dist_sq + sq
        s = einops.einsum(a, keep.double(), "l t d, l t -> l d")
        total = s if total is None else total + s
        c = keep.sum(1)
        count = c if count is None else count + c
    if total is None or (count == 0).any():
        raise InterpError("no activations to average: give more prompts or lower skip_first")
    out = {"mean": total / count[:, None], "count": count}
    if dist_sum is not None:
        out["dist_mean"] = dist_sum / count
        out["dist_std"] = (dist_sq / count - out["dist_mean"] ** 2).clamp(min=0).sqrt()
    return out


def robust_mean(model, prompts, cfg: DirectionsConfig) -> Tensor:
    """Per-layer mean, dropping tokens whose distance to the mean has a z-score above the cut."""
    first = streaming_mean(model, prompts, cfg)
    if cfg.outlier_z is None:
        return first["mean"]
    stats = streaming_mean(model, prompts, cfg, center=first["mean"])
    cut = stats["dist_mean"] + cfg.outlier_z * stats["dist_std"]
    return streaming_mean(model, prompts, cfg, center=first["mean"], max_dist=cut)["mean"]


def _finish(mean_a: Tensor, mean_b: Tensor, hook: str, variant: str) -> Directions:
    diff = mean_a - mean_b
    norms = diff.norm(dim=-1)
    if not torch.isfinite(norms).all():
        raise InterpError("a difference-in-means direction is not finite; check the activations")
    if (norms == 0).all():
        raise InterpError("every difference-in-means direction is zero: the two sides have the "
                          "same activations")
    # layers before an edit (e.g. below RMU's layer) have no difference: their direction is 0
    unit = torch.where(norms[:, None] > 0, diff / norms.clamp(min=1e-30)[:, None], 0.0)
    return Directions(unit.float(), norms.float(), mean_a, mean_b, hook, variant)


def diff_in_means_models(model_a, model_b, prompts, cfg: DirectionsConfig) -> Directions:
    """mean(model_a) - mean(model_b) on the same prompts (e.g. unlearned - original)."""
    return _finish(robust_mean(model_a, prompts, cfg), robust_mean(model_b, prompts, cfg),
                   cfg.hook, "models")


def diff_in_means_prompts(model, prompts_a, prompts_b, cfg: DirectionsConfig) -> Directions:
    """mean(prompts_a) - mean(prompts_b) in one model (e.g. forget - retain)."""
    return _finish(robust_mean(model, prompts_a, cfg), robust_mean(model, prompts_b, cfg),
                   cfg.hook, "prompts")


@torch.no_grad()
def first_principal_component(model, prompts, cfg: DirectionsConfig) -> Directions:
    """Top eigenvector of the per-layer activation covariance (float64, streamed)."""
    mean = streaming_mean(model, prompts, cfg)["mean"]
    cov = None
    for acts in stream_activations(model, prompts, cfg):
        a = acts.double() - mean[:, None, :]
        c = einops.einsum(a, a, "l t d, l t e -> l d e")
        cov = c if cov is None else cov + c
    _, vecs = torch.linalg.eigh(cov)
    top = vecs[..., -1]  # (n_layers, d)
    # orient each component along the mean, so signs are stable
    sign = torch.sign((top * mean).sum(-1, keepdim=True)).clamp(min=0) * 2 - 1
    top = top * sign
    return Directions(top.float(), torch.ones(top.shape[0]), mean, torch.zeros_like(mean),
                      cfg.hook, "pca")


# -------------------------------------------------------------------------------------- ablation
def project_out(x: Tensor, direction: Tensor) -> Tensor:
    """x - (x . r) r for a unit r; a new tensor, the input is never edited in place."""
    r = direction.to(x.dtype)
    return x - einops.einsum(x, r, "... d, d -> ...")[..., None] * r


def _check(direction: Tensor) -> Tensor:
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise InterpError("cannot ablate a zero or NaN direction")
    return direction / norm


def ablation_hooks(model: HookedTransformer, dirs: Directions | Tensor,
                   layers: Sequence[int] | None = None, hook: str | None = None) -> list:
    """Hooks removing each chosen layer's own direction at that layer's hook point."""
    table = dirs.directions if isinstance(dirs, Directions) else dirs
    hook = hook or (dirs.hook if isinstance(dirs, Directions) else "resid_post")
    names = _hook_names(model, hook)
    layers = range(model.cfg.n_layers) if layers is None else layers
    hooks = []
    for layer in layers:
        if isinstance(dirs, Directions) and dirs.diff_norms[layer] == 0:
            continue  # nothing differs at this layer: nothing to remove
        r = _check(table[layer]).to(model.cfg.device)
        hooks.append((names[layer], lambda x, hook, r=r: project_out(x, r)))
    return hooks


def ablate_everywhere_hooks(model: HookedTransformer, direction: Tensor) -> list:
    """Arditi-style: remove one direction from every block input and attention and MLP output."""
    r = _check(direction).to(model.cfg.device)
    fn = lambda x, hook: project_out(x, r)  # noqa: E731
    names = []
    for i in range(model.cfg.n_layers):
        names += [f"blocks.{i}.hook_resid_pre", f"blocks.{i}.hook_attn_out",
                  f"blocks.{i}.hook_mlp_out"]
    return [(n, fn) for n in names]


@contextmanager
def ablated(model: HookedTransformer, hooks: list) -> Iterator[HookedTransformer]:
    """The model with ablation hooks on; they are removed on exit whatever happens."""
    with model.hooks(fwd_hooks=hooks):
        yield model


@torch.no_grad()
def orthogonalize_weights(model: HookedTransformer, direction: Tensor) -> None:
    """Weight edit equal to `ablate_everywhere_hooks`: W <- W - r r^T W for every matrix that writes
    to the residual stream (embedding, attention W_O, MLP W_out and their biases)."""
    r = _check(direction).to(model.cfg.device, model.cfg.dtype)
    model.embed.W_E.copy_(project_out(model.embed.W_E, r))
    for block in model.blocks:
        block.attn.W_O.copy_(project_out(block.attn.W_O, r))
        block.mlp.W_out.copy_(project_out(block.mlp.W_out, r))
        if getattr(block.attn, "b_O", None) is not None:
            block.attn.b_O.copy_(project_out(block.attn.b_O, r))
        if getattr(block.mlp, "b_out", None) is not None:
            block.mlp.b_out.copy_(project_out(block.mlp.b_out, r))
