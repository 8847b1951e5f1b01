"""LoRA on TransformerLens weights: identity at init, merged equals unmerged, removal restores."""

from __future__ import annotations

import copy

import pytest
import torch

from interp.errors import InterpError
from interp.model.load import get_tokenizer
from interp.model.lora import LoRAConfig, add_lora, has_lora, lora_adapters, merge_lora, remove_lora


def _tokens(model):
    return torch.tensor([get_tokenizer(model)("The capital of France is Paris.")["input_ids"]])


def test_fresh_adapters_leave_logits_unchanged(tiny_model):
    tokens = _tokens(tiny_model)
    with torch.no_grad():
        before = tiny_model(tokens)
    with lora_adapters(tiny_model, LoRAConfig(rank=4)) as params:
        assert len(params) == 2 * 7 * tiny_model.cfg.n_layers  # A, B on 7 weights per block
        with torch.no_grad():
            torch.testing.assert_close(tiny_model(tokens), before, atol=0, rtol=0)
    assert not has_lora(tiny_model)


def test_merged_equals_unmerged_and_equals_hand_edit(tiny_model):
    model = copy.deepcopy(tiny_model)
    tokens = _tokens(model)
    original_wq = model.blocks[0].attn.W_Q.detach().clone()
    params = add_lora(model, LoRAConfig(rank=3, alpha=6.0, seed=1))
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
        unmerged = model(tokens)
        delta = model.blocks[0].attn.parametrizations.W_Q[0]
        a, b = delta.A.clone(), delta.B.clone()
    merge_lora(model)
    assert not has_lora(model)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), unmerged, atol=1e-5, rtol=1e-5)
    # by hand: W_Q[h] += 2 * (A @ B)[:, h*d_head:(h+1)*d_head]
    dh = model.cfg.d_head
    m = 2.0 * a @ b
    for h in range(model.cfg.n_heads):
        torch.testing.assert_close(model.blocks[0].attn.W_Q[h],
                                   original_wq[h] + m[:, h * dh:(h + 1) * dh])


def test_removed_adapters_restore_the_weights_and_gqa_is_adapted(tiny_model):
    model = copy.deepcopy(tiny_model)
    assert model.cfg.n_key_value_heads < model.cfg.n_heads  # the tiny Llama uses GQA
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = add_lora(model, LoRAConfig(rank=2))
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    assert not torch.equal(model.blocks[0].attn._W_K, before["blocks.0.attn._W_K"])
    remove_lora(model)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_dropout_only_in_training_mode(tiny_model):
    model = copy.deepcopy(tiny_model)
    tokens = _tokens(model)
    with lora_adapters(model, LoRAConfig(rank=4, dropout=0.5)) as params:
        with torch.no_grad():
            for p in params:
                p.add_(0.1)
            model.eval()
            a, b = model(tokens), model(tokens)
            torch.testing.assert_close(a, b, atol=0, rtol=0)
            model.train()
            torch.manual_seed(0)
            c = model(tokens)
            model.eval()
        assert not torch.allclose(a, c)


def test_bad_lora_settings(tiny_model):
    with pytest.raises(InterpError, match="rank"):
        add_lora(tiny_model, LoRAConfig(rank=0))
    with pytest.raises(InterpError, match="targets"):
        add_lora(tiny_model, LoRAConfig(targets=("W_nope",)))
    assert not has_lora(tiny_model)


def test_adapted_weights_keep_the_forward_layout(tiny_model):
    """W + scale A B is laid out as `interp.model.layout` lays W out, so TransformerLens' view of
    it is contiguous (no copy per forward), and its values are the plain sum."""
    from interp.model.lora import LoRAConfig, lora_adapters

    with lora_adapters(tiny_model, LoRAConfig(rank=2)) as params:
        with torch.no_grad():
            for p in params:
                p.add_(0.1)
        blk = tiny_model.blocks[0]
        assert blk.mlp.W_in.T.is_contiguous() and blk.mlp.W_out.T.is_contiguous()
        assert blk.attn.W_Q.permute(0, 2, 1).is_contiguous()
        assert blk.attn.W_O.permute(2, 0, 1).is_contiguous()
        delta = blk.mlp.parametrizations.W_in[0]
        raw = blk.mlp.parametrizations.W_in.original
        torch.testing.assert_close(blk.mlp.W_in, raw + delta.delta())
