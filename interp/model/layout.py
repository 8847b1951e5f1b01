"""Weights laid out in memory the way TransformerLens' forward reads them.

TransformerLens keeps `W_in`, `W_gate`, `W_out`, `W_U` as [in, out] and the attention weights per
head, and its forward turns them into nn.Linear's [out, in] with `.T.contiguous()` or a
rearrange, which copies every weight matrix on every forward pass. On a CPU that copy dominates
short inputs (a single generated token, a batch of cloze questions). Re-striding each parameter
so that the view TransformerLens asks for is already contiguous keeps every value, name, shape
and hook the same and turns those copies into no-ops. In-place edits (orthogonalization,
`copy_`, loading a state dict) keep the layout; a parameter replaced by a new tensor only loses
the speed-up, never correctness.
"""

from __future__ import annotations

import torch
from torch import nn

# parameter name -> the permutation whose contiguous result TransformerLens' forward asks for
_ORDERS: dict[str, tuple[int, ...]] = {
    "W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0), "W_U": (1, 0),  # .T.contiguous()
    "W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1),   # h m d -> (h d) m
    "_W_K": (0, 2, 1), "_W_V": (0, 2, 1),
    "W_O": (2, 0, 1),                                       # h d m -> m (h d)
}


def restride(t: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """The same values and shape, stored so that `t.permute(order)` is contiguous."""
    inverse = [order.index(i) for i in range(len(order))]
    return t.permute(order).contiguous().permute(inverse)


@torch.no_grad()
def linear_layout(model: nn.Module) -> nn.Module:
    """Re-stride the model's linear weights in place (values unchanged); returns the model."""
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        order = _ORDERS.get(leaf)
        if order is None or param.dim() != len(order) or not param.is_floating_point():
            continue
        if param.permute(order).is_contiguous():
            continue
        param.data = restride(param.data, order)
    return model
