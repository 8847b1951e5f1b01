"""The one padding rule: batches are left-padded with the tokenizer's pad id (0 when it has none).

Left padding puts every prompt's last token at position -1; the attention mask (1 on real tokens)
keeps the pads out of every real position's attention, so the pad id changes nothing but the pad
positions' own activations, which no reader keeps.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Int
from torch import Tensor, nn


def pad_id(source) -> int:
    """The id batches are padded with: `source`'s tokenizer's pad id, or 0 when it has none.
    `source`: a hooked model (its checkpoint's tokenizer, `get_tokenizer`) or a tokenizer."""
    if isinstance(source, nn.Module):
        from interp.model.load import get_tokenizer

        source = get_tokenizer(source)
    return getattr(source, "pad_token_id", None) or 0


def pad_left(
    sequences: Sequence[Sequence[int]], pad_id: int, device
) -> tuple[Int[Tensor, "b p"], Int[Tensor, "b p"]]:
    """(tokens, mask): the sequences right-aligned in one (batch, longest) tensor, `pad_id` before
    the shorter ones; the mask is 1 on real tokens, 0 on pads."""
    width = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        tokens[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[i, width - len(seq):] = 1
    return tokens.to(device), mask.to(device)
