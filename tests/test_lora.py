"""LoRA on TransformerLens weights: identity at init, merged equals unmerged, removal restores."""

from __future__ import annotations

import pytest
import torch

from interp.errors import InterpError
from interp.model.load import get_tokenizer
from interp.model.lora import (
    LoRAConfig,
    add_lora,
    has_lora,
    lora_adapters,
    lora_deltas,
    lora_impl,
    merge_lora,
    remove_lora,
)
from interp.model.state import copy_model

from .conftest import save_tiny_hf, tiny_configs


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


@pytest.mark.parametrize("impl", ["hooks", "weights"])
def test_merged_equals_unmerged_and_equals_hand_edit(tiny_model, impl):
    model = copy_model(tiny_model)
    tokens = _tokens(model)
    original_wq = model.blocks[0].attn.W_Q.detach().clone()
    params = add_lora(model, LoRAConfig(rank=3, alpha=6.0, seed=1, impl=impl))
    assert lora_impl(model) == impl
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
        unmerged = model(tokens)
        delta = lora_deltas(model)["blocks.0.attn.W_Q"]
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
    model = copy_model(tiny_model)
    assert model.cfg.n_key_value_heads < model.cfg.n_heads  # the tiny Llama uses GQA
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = add_lora(model, LoRAConfig(rank=2, impl="weights"))
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    assert not torch.equal(model.blocks[0].attn._W_K, before["blocks.0.attn._W_K"])
    remove_lora(model)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("impl", ["hooks", "weights"])
def test_dropout_only_in_training_mode(tiny_model, impl):
    model = copy_model(tiny_model)
    tokens = _tokens(model)
    with lora_adapters(model, LoRAConfig(rank=4, dropout=0.5, impl=impl)) as params:
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
    with pytest.raises(InterpError, match="impl"):
        add_lora(tiny_model, LoRAConfig(impl="fast"))
    assert not has_lora(tiny_model)


def test_adapted_weights_keep_the_forward_layout(tiny_model):
    """W + scale A B is laid out as `interp.model.layout` lays W out, so TransformerLens' view of
    it is contiguous (no copy per forward), and its values are the plain sum."""
    from interp.model.lora import LoRAConfig, lora_adapters

    with lora_adapters(tiny_model, LoRAConfig(rank=2, impl="weights")) as params:
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


# ------------------------------------------------------------------ hooks form == weights form
@pytest.fixture(scope="module")
def arch_models(tmp_path_factory, bpe_tokenizer):
    from interp.model.load import load_model

    out = {}
    for arch in ("llama", "gemma", "gpt2", "gpt_neox"):  # GQA, MQA, post-norm-free GELU, parallel
        folder = save_tiny_hf(tmp_path_factory.mktemp(arch),
                              tiny_configs(len(bpe_tokenizer))[arch], bpe_tokenizer)
        out[arch] = load_model(folder, device="cpu")
    return out


def _adapted_run(model, impl, tokens, hooks=()):
    """Logits and the adapters' gradients for one loss, the same adapter values either way."""
    params = add_lora(model, LoRAConfig(rank=3, alpha=6.0, seed=2, impl=impl))
    try:
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p in params:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        with model.hooks(fwd_hooks=list(hooks)):
            logits = model(tokens)
        logits.square().mean().backward()
        return logits.detach(), [p.grad.clone() for p in params]
    finally:
        remove_lora(model)


@pytest.mark.parametrize("arch", ["llama", "gemma", "gpt2", "gpt_neox"])
def test_hooks_form_equals_weights_form(arch_models, arch):
    """The fast form (low-rank terms beside frozen matmuls) gives the logits and the adapter
    gradients of the reference (W + scale A B as the weight), on four architecture families."""
    model = arch_models[arch]
    per_block = 7 if model.cfg.gated_mlp else 6  # W_gate only in gated MLPs
    assert _targets_found(model) == per_block * model.cfg.n_layers
    tokens = _tokens(model)
    flags = [p.requires_grad for p in model.parameters()]
    ref_logits, ref_grads = _adapted_run(model, "weights", tokens)
    logits, grads = _adapted_run(model, "hooks", tokens)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
    assert not has_lora(model)
    assert [p.requires_grad for p in model.parameters()] == flags  # restored


def _targets_found(model) -> int:
    params = add_lora(model, LoRAConfig(rank=1, impl="hooks"))
    remove_lora(model)
    return len(params) // 2


def test_user_hooks_see_the_adapted_model(tiny_model):
    """A user hook on hook_z / hook_post (head or neuron ablation) changes what W_O / W_out's
    adapters read, and a hook on hook_q sees the adapted queries, as with adapted weights."""
    model = copy_model(tiny_model)
    tokens = _tokens(model)
    seen = {}

    def zero_head(z, hook):
        z[:, :, 1] = 0.0
        return z

    def zero_neurons(post, hook):
        post[..., :10] = 0.0
        return post

    def keep_q(q, hook):
        seen.setdefault(hook.name, []).append(q.detach().clone())

    hooks = [("blocks.0.attn.hook_z", zero_head), ("blocks.1.mlp.hook_post", zero_neurons),
             ("blocks.0.attn.hook_q", keep_q)]
    ref, ref_grads = _adapted_run(model, "weights", tokens, hooks)
    out, grads = _adapted_run(model, "hooks", tokens, hooks)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
    q_ref, q_hooks = seen["blocks.0.attn.hook_q"]
    torch.testing.assert_close(q_hooks, q_ref, atol=1e-5, rtol=1e-5)
    plain, _ = _adapted_run(model, "hooks", tokens)
    assert not torch.allclose(plain, out)  # the user hooks did change the result


def test_hooks_form_with_the_kv_cache_and_run_with_cache(tiny_model):
    """Generation with TransformerLens' key-value cache and run_with_cache (which resets the
    model's hooks) keep the adapters; greedy tokens match the weights form."""
    from interp.scoring import generate_greedy

    model = copy_model(tiny_model)
    prompt = _tokens(model)[0].tolist()
    outs, caches = [], []
    for impl in ("weights", "hooks"):
        params = add_lora(model, LoRAConfig(rank=3, seed=2, impl=impl))
        with torch.no_grad():
            for p in params:
                p.add_(0.2)
            _, cache = model.run_with_cache(torch.tensor([prompt]))
            caches.append(cache["blocks.1.hook_mlp_out"])
            outs.append(generate_greedy(model, [prompt], max_new_tokens=6))
            outs.append(generate_greedy(model, [prompt], max_new_tokens=6, use_cache=False))
        remove_lora(model)
    torch.testing.assert_close(caches[1], caches[0], atol=1e-5, rtol=1e-5)
    assert outs[0] == outs[1] == outs[2] == outs[3]


def test_weights_form_where_hooks_do_not_apply(tiny_model):
    from interp.model.lora import hooks_supported

    model = copy_model(tiny_model)
    assert hooks_supported(model) is None
    model.cfg.use_attn_result = True
    assert "use_attn_result" in hooks_supported(model)
    with lora_adapters(model, LoRAConfig(rank=2)):
        assert lora_impl(model) == "weights"
    with pytest.raises(InterpError, match="hooks"):
        add_lora(model, LoRAConfig(rank=2, impl="hooks"))
