"""Blocks spread over several GPUs (`--n-devices N`), where TransformerLens' forward expects them.

TransformerLens' forward moves the residual stream to `get_device_for_block_index(i, cfg)` before
block i (contiguous runs of n_layers/N blocks per GPU), but its own `move_model_modules_to_device`
(3.9) puts every module on one device, and a model built on the CPU and converted stays there: the
first block then meets a residual on another device. `place_blocks` puts each module where the
forward will look for it: the embeddings with block 0, block i on its device, the final norm and
the unembedding with the last block.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformer_lens.utilities.multi_gpu import get_device_for_block_index


def place_blocks(model, device_for: Callable[[int, object], torch.device] | None = None):
    """Move `model`'s modules to their devices (by default TransformerLens' rule) and return it."""
    device_for = device_for or get_device_for_block_index
    cfg = model.cfg
    first, last = device_for(0, cfg), device_for(cfg.n_layers - 1, cfg)
    for name in ("embed", "hook_embed", "pos_embed", "hook_pos_embed"):
        if hasattr(model, name):
            getattr(model, name).to(first)
    for i, block in enumerate(model.blocks):
        block.to(device_for(i, cfg))
    for name in ("ln_final", "unembed"):
        if hasattr(model, name):
            getattr(model, name).to(last)
    return model
