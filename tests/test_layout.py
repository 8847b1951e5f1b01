"""The linear layout: every parameter keeps its values, the forward pass gives the same logits,
and the views TransformerLens' forward takes are contiguous (so its `.contiguous()` copies
nothing), for a plain and a grouped-query model."""

from __future__ import annotations

import pytest
import torch

from interp.model.layout import _ORDERS, linear_layout, restride
from interp.model.state import copy_model


@pytest.mark.parametrize("order", [(1, 0), (0, 2, 1), (2, 0, 1)])
def test_restride_keeps_values_and_makes_the_permutation_contiguous(order):
    t = torch.randn(*[3, 5, 7][: len(order)])
    r = restride(t, order)
    assert torch.equal(r, t) and r.shape == t.shape
    assert r.permute(order).is_contiguous()


def _check(model, tokens):
    with torch.no_grad():  # start from plain contiguous storage (load_model already re-strides)
        for p in model.parameters():
            p.data = p.data.contiguous()
    assert not model.blocks[0].mlp.W_out.T.is_contiguous()
    reference = copy_model(model)
    linear_layout(model)
    for (n1, p1), (n2, p2) in zip(reference.named_parameters(), model.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    moved = [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in _ORDERS]
    assert moved
    for n, p in moved:
        assert p.permute(_ORDERS[n.rsplit(".", 1)[-1]]).is_contiguous(), n
    mlp = model.blocks[0].mlp
    assert mlp.W_out.T.contiguous().data_ptr() == mlp.W_out.data_ptr()
    with torch.no_grad():
        assert torch.allclose(model(tokens), reference(tokens), atol=1e-5, rtol=0)


def test_layout_on_a_grouped_query_model(tiny_model):
    assert tiny_model.cfg.n_key_value_heads is not None  # the Llama stand-in uses GQA
    _check(copy_model(tiny_model), torch.randint(0, tiny_model.cfg.d_vocab, (2, 9)))


def test_layout_on_a_plain_attention_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64,
                                  d_vocab=50, n_ctx=16, act_fn="gelu", seed=0)
    _check(HookedTransformer(cfg), torch.randint(0, 50, (2, 7)))
