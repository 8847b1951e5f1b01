"""Blocks spread over several GPUs (`--n-devices N`), where TransformerLens' forward expects them.

TransformerLens' forward moves the residual stream to `get_device_for_block_index(i, cfg)` before
block i (contiguous runs of n_layers/N blocks per GPU), but its own `move_model_modules_to_device`
(3.9) puts every module on one device, and a model built on the CPU and converted stays there: the
first block then meets a residual on another device. `place_blocks` puts each module where the
forward will look for it: the embeddings with block 0, block i on its device, and the final norm
and the unembedding back on block 0's device (`cfg.device`), with a pre-hook that brings their
input there, so logits land where every caller builds its masks and targets, and a readout of any
layer's residual (the lenses) works wherever that layer lives.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformer_lens.utilities.multi_gpu import get_device_for_block_index


def place_blocks(model, device_for: Callable[[int, object], torch.device] | None = None):
    """Move `model`'s modules to their devices (by default TransformerLens' rule) and return it."""
    device_for = device_for or get_device_for_block_index
    cfg = model.cfg
    first = device_for(0, cfg)
    for name in ("embed", "hook_embed", "pos_embed", "hook_pos_embed"):
        if hasattr(model, name):
            getattr(model, name).to(first)
    for i, block in enumerate(model.blocks):
        block.to(device_for(i, cfg))
    for name in ("ln_final", "unembed"):
        if hasattr(model, name):
            module = getattr(model, name).to(first)
            module.register_forward_pre_hook(to_own_device)
    return model


def to_own_device(module, args):
    """A forward pre-hook: the module's tensor inputs moved to its parameters' device."""
    device = next(module.parameters()).device
    return tuple(a.to(device) if torch.is_tensor(a) else a for a in args)
