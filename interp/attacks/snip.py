"""SNIP attribution and set-difference pruning (Wei et al. 2024, as used by the paper).

score(W) = |W| * sum over batches of |dL/dW|, summed in float64, for every attention and MLP weight
matrix, once on forget data and once on utility data. Per matrix, the weights in the top-q fraction
of the forget score that are not in the top-p fraction of the utility score are zeroed (p >= q).
The neuron-level variant scores an MLP neuron as the sum of its input row (W_in, W_gate column i)
and output column (W_out row i) and prunes whole neurons per layer by the same rule.
Pruning is applied inside `pruned(model, masks)`, which restores the weights on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from interp.errors import InterpError
from interp.model.hooks import MLP_IN, MLP_OUT, block_weight_names, mlp_weight_name
from interp.training import TokenBatch, fixed_threads, lm_loss


@fixed_threads()  # gradients: repeatable whatever the caller's thread count
def snip_scores(model: HookedTransformer, batches: Iterable[TokenBatch],
                names: list[str] | None = None, progress: bool = False,
                desc: str = "SNIP") -> dict[str, Float[Tensor, "..."]]:
    """|W| * sum_b |dL_b/dW| per weight matrix (float64 sums, returned as float32)."""
    names = names or block_weight_names(model)
    params = dict(model.named_parameters())
    grad_sums = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    was_training = model.training
    flags = {n: p.requires_grad for n, p in params.items()}
    model.eval()
    seen = 0
    try:
        for p in params.values():
            p.requires_grad_(False)
        for n in names:
            params[n].requires_grad_(True)
        for batch in tqdm(list(batches), desc=desc, disable=not progress, leave=False):
            model.zero_grad(set_to_none=True)
            loss = lm_loss(model, batch)
            if not torch.isfinite(loss):
                raise InterpError(f"{desc}: the loss is {loss.item()}; check the model and data")
            loss.backward()
            for n in names:
                grad_sums[n] += params[n].grad.detach().abs().double()
            seen += 1
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    if seen == 0:
        raise InterpError(f"{desc}: no batches to score")
    return {n: (params[n].detach().abs().double() * grad_sums[n]).float() for n in names}


def check_fractions(q: float, p: float) -> None:
    """An `InterpError` unless 0 < q <= p <= 1."""
    for name, v in (("q", q), ("p", p)):
        if not 0 < v <= 1:
            raise InterpError(f"pruning fraction {name}={v} must be in (0, 1]; e.g. 0.01 for 1%")
    if q > p:
        raise InterpError(f"pruning needs q <= p (forget top-q, utility top-p); got q={q} p={p}")


def top_mask(scores: Tensor, frac: float) -> Bool[Tensor, "..."]:
    """True on exactly round(frac * numel) entries with the highest scores."""
    flat = scores.reshape(-1)
    k = int(round(frac * flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        mask[flat.topk(k).indices] = True
    return mask.reshape(scores.shape)


def set_difference(forget: Tensor, utility: Tensor, q: float, p: float) -> Bool[Tensor, "..."]:
    """The top-q forget entries that are not top-p utility entries."""
    check_fractions(q, p)
    return top_mask(forget, q) & ~top_mask(utility, p)


@dataclass
class Thresholds:
    """Per matrix, the score above which an entry is in the top fraction, for each fraction.

    Storing thresholds (not masks) keeps a grid over many (p, q) cells at the memory of the scores.
    """

    values: dict[str, dict[float, float]]

    @classmethod
    def of(cls, scores: dict[str, Tensor], fractions: Iterable[float]) -> "Thresholds":
        """The thresholds of every matrix's scores at each fraction (inf where the fraction keeps no
        entry)."""
        out = {}
        for name, s in scores.items():
            flat = s.reshape(-1).float()
            out[name] = {}
            for f in fractions:
                k = int(round(f * flat.numel()))
                out[name][f] = float("inf") if k == 0 else float(flat.topk(k).values[-1])
        return cls(out)


def grid_mask(forget: Tensor, utility: Tensor, tf: float, tu: float) -> Tensor:
    """The set-difference mask from thresholds: forget score >= `tf` and utility score below
    `tu`."""
    return (forget >= tf) & ~(utility >= tu)


def neuron_scores(model: HookedTransformer, scores: dict[str, Tensor]) -> Float[Tensor, "l m"]:
    """Per layer and MLP neuron: the summed score of its input column(s) and output row."""
    rows = []
    for layer in range(model.cfg.n_layers):
        total = scores[mlp_weight_name(layer, MLP_OUT)].double().sum(-1)
        for w in MLP_IN:
            key = mlp_weight_name(layer, w)
            if key in scores:
                total = total + scores[key].double().sum(0)
        rows.append(total)
    return torch.stack(rows)


def neuron_set_difference(forget: Tensor, utility: Tensor, q: float,
                          p: float) -> Bool[Tensor, "l m"]:
    """Per layer: the top-q neurons by forget score that are not top-p by utility score."""
    check_fractions(q, p)
    return torch.stack([top_mask(f, q) & ~top_mask(u, p) for f, u in zip(forget, utility)])


def neuron_weight_masks(model: HookedTransformer,
                        neurons: Bool[Tensor, "l m"]) -> dict[str, Tensor]:
    """The weight masks that remove whole neurons (input columns and output rows)."""
    params = dict(model.named_parameters())
    masks = {}
    for layer in range(model.cfg.n_layers):
        sel = neurons[layer].to(model.cfg.device)
        for w in MLP_IN:
            key = mlp_weight_name(layer, w)
            if key in params:
                masks[key] = sel[None, :].expand_as(params[key])
        key = mlp_weight_name(layer, MLP_OUT)
        masks[key] = sel[:, None].expand_as(params[key])
    return masks


@contextmanager
def pruned(model: HookedTransformer, masks: dict[str, Tensor]) -> Iterator[HookedTransformer]:
    """The model with the masked weights zeroed; the original weights come back on exit."""
    params = dict(model.named_parameters())
    unknown = set(masks) - set(params)
    if unknown:
        raise InterpError(f"no such weights to prune: {sorted(unknown)[:3]}")
    saved = {}
    try:
        with torch.no_grad():
            for name, mask in masks.items():
                saved[name] = params[name].detach().clone()
                params[name].masked_fill_(mask.to(params[name].device), 0.0)
        yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                params[name].copy_(original)
