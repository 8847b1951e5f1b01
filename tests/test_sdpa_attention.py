"""SDPA attention (`interp.model.attention`) against TransformerLens' eager attention.

Tiny random-weight models in float32, with and without left padding (prompts batched by
`interp.padding.pad_left`, the attention mask passed to the model as `interp.scoring` does). The
SDPA path's logits equal eager's elementwise to rtol = atol = 1e-5 (`torch.testing.assert_close`:
|a - b| <= 1e-5 + 1e-5 |b|). Every parameter's gradient equals eager's elementwise to rtol = 1e-5
and atol = 1e-5 x the largest |eager gradient| entry of the model (gradients are sums of hundreds
of float32 terms: a plain atol of 1e-5 on entries up to ~300 would ask for less than float32
rounding; some entries, e.g. GPT-2's b_K, are zero in exact arithmetic and pure rounding noise).
In float64 the two paths agree to 1e-10 on the same scales (`test_float64_agrees_to_rounding`),
so the float32 differences are rounding. Every position is compared, pads included (eager gives a
padding query with no key a zero pattern; so does SDPA).
"""

from __future__ import annotations

import copy
import os
import pickle
import warnings
from contextlib import nullcontext

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from interp.errors import InterpError
from interp.model import attention
from interp.model.attention import (
    attention_modules,
    eager_attention,
    eager_reason,
    install_default,
    is_installed,
    use_sdpa,
    version_supported,
)
from interp.model.load import hooked_config
from interp.padding import pad_left

from .conftest import tiny_configs

# scripts/gpu_check.sh runs these on the GPU (INTERP_TEST_DEVICE=cuda)
DEVICE = os.environ.get("INTERP_TEST_DEVICE", "cpu")

VOCAB = 97
TOL = dict(rtol=1e-5, atol=1e-5)
CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
           "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM", "gpt2": "GPT2LMHeadModel"}
ARCHS = list(CLASSES)


def _hf_dict(arch: str) -> dict:
    """The tests' tiny HF config.json of `arch` (conftest's), as `hooked_config` takes it."""
    if arch == "gemma":  # Gemma-1 with its own head_dim (n_heads * head_dim != d_model), MQA
        from transformers import GemmaConfig

        config = GemmaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                             head_dim=24, max_position_embeddings=256).to_dict()
    else:
        config = tiny_configs(VOCAB)[arch].to_dict()
    return {**config, "architectures": [CLASSES[arch]]}


def _randomize(model: HookedTransformer, seed: int) -> HookedTransformer:
    """Random weights and non-zero biases, with peaked attention (so masks matter)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p.device))
            if name.endswith(("W_Q", "W_K")):
                p.mul_(3.0)
    return model


def build(arch: str, seed: int = 0, cfg: HookedTransformerConfig | None = None):
    if cfg is None:
        cfg = hooked_config(_hf_dict(arch), device=DEVICE, dtype=torch.float32)
    cfg.init_weights, cfg.seed = True, seed
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=None, move_to_device=True)
    return use_sdpa(_randomize(model, seed)).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Toy shapes run fastest on one thread (and do not wait on a busy second core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models() -> dict:
    return {arch: build(arch) for arch in ARCHS}


@pytest.fixture()
def sdpa_calls(monkeypatch) -> list:
    """Counts the attention calls that went through SDPA."""
    calls: list = []
    real = attention._sdpa_z

    def counted(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(attention, "_sdpa_z", counted)
    return calls


def batch(padded: bool, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    lengths = [9, 6, 2] if padded else [9, 9, 9]
    seqs = [torch.randint(1, VOCAB, (n,), generator=gen).tolist() for n in lengths]
    tokens, mask = pad_left(seqs, pad_id=0, device=DEVICE)
    return tokens, (mask if padded else None)


def logits_and_grads(model, tokens, mask):
    model.zero_grad(set_to_none=True)
    logits = model(tokens, attention_mask=mask)
    gen = torch.Generator().manual_seed(7)
    weights = torch.randn(logits.shape, generator=gen).to(logits.device)
    (logits * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logits.detach(), grads


def assert_same(model, tokens, mask, calls, tol: float = 1e-5):
    n_layers = model.cfg.n_layers
    calls.clear()
    fast, fast_grads = logits_and_grads(model, tokens, mask)
    assert len(calls) == n_layers  # every layer took the fast path
    with eager_attention(model):
        slow, slow_grads = logits_and_grads(model, tokens, mask)
    assert len(calls) == n_layers  # and none inside eager_attention
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, slow, rtol=tol, atol=tol)
    assert fast_grads.keys() == slow_grads.keys() and len(fast_grads) > 0
    scale = max(g.abs().max().item() for g in slow_grads.values())
    assert scale > 0
    for name in slow_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=tol,
                                   atol=tol * scale, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_grads_match_eager(arch, padded, models, sdpa_calls):
    tokens, mask = batch(padded)
    assert_same(models[arch], tokens, mask, sdpa_calls)


@pytest.mark.parametrize("arch", ARCHS)
def test_float64_agrees_to_rounding(arch, sdpa_calls):
    cfg = hooked_config(_hf_dict(arch), device=DEVICE, dtype=torch.float64)
    model = build(arch, cfg=cfg)
    assert_same(model, *batch(True), sdpa_calls, tol=1e-10)


def test_input_embedding_grads_match(models, sdpa_calls):
    model = models["llama"]
    tokens, mask = batch(True)
    out = {}
    for mode in ("sdpa", "eager"):
        embed = model.embed(tokens).detach().requires_grad_(True)
        with eager_attention(model) if mode == "eager" else nullcontext():
            logits = model(embed, start_at_layer=0, attention_mask=mask)
        logits.logsumexp(-1).sum().backward()
        out[mode] = (logits.detach(), embed.grad)
    torch.testing.assert_close(out["sdpa"][0], out["eager"][0], **TOL)
    scale = out["eager"][1].abs().max().item()
    torch.testing.assert_close(out["sdpa"][1], out["eager"][1], rtol=1e-5, atol=1e-5 * scale)
    assert len(sdpa_calls) == model.cfg.n_layers


@pytest.mark.parametrize("arch, flag", [
    ("llama", "use_attn_result"), ("llama", "use_split_qkv_input"),
    ("llama", "ungroup_grouped_query_attention"), ("gpt2", "use_attn_in")])
def test_config_switches_match_eager(arch, flag, sdpa_calls):
    model = build(arch, seed=3)
    getattr(model, f"set_{flag}")(True)
    tokens, mask = batch(True, seed=4)
    assert_same(model, tokens, mask, sdpa_calls)


def test_local_attention_and_no_scale_match_eager(sdpa_calls):
    cfg = HookedTransformerConfig(
        d_model=32, d_head=8, n_heads=4, n_layers=2, n_ctx=64, d_vocab=VOCAB, d_mlp=64,
        act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary", rotary_dim=8,
        use_local_attn=True, attn_types=["local", "global"], window_size=3,
        scale_attn_by_inverse_layer_idx=True, n_key_value_heads=2, device=DEVICE)
    model = build("local", cfg=cfg)
    for padded in (False, True):
        assert_same(model, *batch(padded), sdpa_calls)


def test_kv_cache_matches_eager(models, sdpa_calls):
    model = models["qwen2"]
    for padded in (False, True):
        tokens, mask = batch(padded, seed=5)
        if mask is None:  # TransformerLens needs a mask (or a tokenizer) with a cache
            mask = torch.ones_like(tokens)
        out = {}
        for mode in ("sdpa", "eager"):
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, DEVICE, tokens.shape[0])
            with torch.no_grad(), eager_attention(model) if mode == "eager" else nullcontext():
                first = model(tokens[:, :6], past_kv_cache=cache, attention_mask=mask[:, :6])
                rest = model(tokens[:, 6:], past_kv_cache=cache, attention_mask=mask[:, 6:])
            out[mode] = torch.cat([first, rest], dim=1)
        torch.testing.assert_close(out["sdpa"], out["eager"], **TOL)
        with torch.no_grad(), eager_attention(model):
            full = model(tokens, attention_mask=mask)
        torch.testing.assert_close(out["sdpa"], full, rtol=1e-4, atol=1e-4)


def test_gemma2_softcap_stays_eager(sdpa_calls):
    cfg = HookedTransformerConfig(
        d_model=64, d_head=16, n_heads=4, n_key_value_heads=2, n_layers=2, n_ctx=64,
        d_vocab=VOCAB, d_mlp=128, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=16, gated_mlp=True,
        attn_scores_soft_cap=50.0, output_logits_soft_cap=30.0,
        use_normalization_before_and_after=True,
        original_architecture="Gemma2ForCausalLM", device=DEVICE)
    model = build("gemma2", cfg=cfg)
    assert all(is_installed(m) for m in attention_modules(model))
    assert eager_reason(model.blocks[0].attn) == "attention soft-capping"
    tokens, mask = batch(True)
    fast, fast_grads = logits_and_grads(model, tokens, mask)
    assert sdpa_calls == []
    with eager_attention(model):
        slow, slow_grads = logits_and_grads(model, tokens, mask)
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)


# ------------------------------------------------------------------------------------ hooks
def test_pattern_hook_sees_pattern_and_result_is_eager(models, sdpa_calls):
    model = models["mistral"]
    tokens, mask = batch(True)
    seen = []
    with torch.no_grad(), eager_attention(model):
        ref_logits, ref_cache = model.run_with_cache(tokens, attention_mask=mask)
    with torch.no_grad():
        logits = model.run_with_hooks(
            tokens, attention_mask=mask,
            fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: seen.append(p.clone()))])
    assert len(sdpa_calls) == model.cfg.n_layers - 1  # layer 0 eager, the rest SDPA
    torch.testing.assert_close(seen[0], ref_cache["pattern", 0], rtol=0, atol=0)
    torch.testing.assert_close(logits, ref_logits, **TOL)
    # a hook that edits the pattern takes effect as in eager
    def zero_head(p, hook):
        p[:, 1] = 0.0
        return p
    hooks = [("blocks.1.attn.hook_pattern", zero_head)]
    with torch.no_grad():
        edited = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=hooks)
        with eager_attention(model):
            edited_ref = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=hooks)
    torch.testing.assert_close(edited, edited_ref, **TOL)
    assert (edited - logits).abs().max() > 1e-3


def test_run_with_cache_patterns(models, sdpa_calls):
    model = models["gemma"]
    tokens, mask = batch(True)
    with torch.no_grad(), eager_attention(model):
        ref_logits, ref = model.run_with_cache(tokens, attention_mask=mask)
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            tokens, attention_mask=mask,
            names_filter=lambda n: n.endswith(("hook_pattern", "hook_attn_scores")))
    assert sdpa_calls == []  # every layer's pattern is asked for
    assert len(cache) == 2 * model.cfg.n_layers
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(cache["pattern", layer], ref["pattern", layer], rtol=0, atol=0)
        torch.testing.assert_close(cache["attn_scores", layer], ref["attn_scores", layer],
                                   rtol=0, atol=0)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    # hooks gone after the call: the fast path is back
    sdpa_calls.clear()
    with torch.no_grad():
        model(tokens, attention_mask=mask)
    assert len(sdpa_calls) == model.cfg.n_layers


def test_backward_hook_on_pattern_stays_eager(models, sdpa_calls):
    model = models["llama"]
    tokens, mask = batch(False)
    grads = []
    model.add_hook("blocks.1.attn.hook_pattern", lambda g, hook: grads.append(g), dir="bwd")
    try:
        assert eager_reason(model.blocks[1].attn) == "hooks on hook_pattern"
        model(tokens).sum().backward()
    finally:
        model.reset_hooks()
        model.zero_grad(set_to_none=True)
    assert len(sdpa_calls) == 1 and sdpa_calls[0] is model.blocks[0].attn
    assert grads and grads[0].shape[-2:] == (tokens.shape[1], tokens.shape[1])
    assert eager_reason(model.blocks[1].attn) is None


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_other_hooks_see_the_same_values(arch, models, sdpa_calls):
    """hook_z and every other hook point (q, k, v, rot_q, rot_k, attn_out, resid, ...) except
    the pattern and scores see the same activations in both paths."""
    model = models[arch]
    tokens, mask = batch(True)
    keep = lambda n: not n.endswith(("hook_pattern", "hook_attn_scores"))
    with torch.no_grad():
        _, fast = model.run_with_cache(tokens, attention_mask=mask, names_filter=keep)
        assert len(sdpa_calls) == model.cfg.n_layers
        with eager_attention(model):
            _, slow = model.run_with_cache(tokens, attention_mask=mask, names_filter=keep)
    assert "blocks.0.attn.hook_z" in fast and fast.keys() == slow.keys()
    if arch == "llama":
        assert "blocks.0.attn.hook_rot_q" in fast
    for name in slow.keys():
        torch.testing.assert_close(fast[name], slow[name], **TOL, msg=name)
    # pads' z is exactly zero in both (a padding query attends to nothing)
    assert (fast["z", 0][2, :-2] == 0).all() and (slow["z", 0][2, :-2] == 0).all()


def test_in_place_hook_on_z_with_backward(models, sdpa_calls):
    """A head ablation that edits z in place (as test_lora's user hooks do) still backpropagates
    and gives eager's logits and gradients."""
    model = models["llama"]

    def zero_head(z, hook):
        z[:, :, 1] = 0.0
        return z

    for padded in (False, True):
        tokens, mask = batch(padded)
        model.add_hook("blocks.0.attn.hook_z", zero_head)
        try:
            assert_same(model, tokens, mask, sdpa_calls)
        finally:
            model.reset_hooks()


def test_layers_share_one_padding_mask(models, monkeypatch):
    """SDPA saves its mask for the backward pass: one additive mask serves every layer."""
    import torch.nn.functional as F

    masks = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = models["mistral"]
    tokens, mask = batch(True)
    model(tokens, attention_mask=mask)
    assert len(masks) == model.cfg.n_layers and masks[0].is_floating_point()
    assert all(m is masks[0] for m in masks)


# --------------------------------------------------------------------------------- switches
def test_eager_attention_restores(models, sdpa_calls):
    model = models["qwen2"]
    tokens, _ = batch(False)
    attn = model.blocks[0].attn
    with torch.no_grad():
        with eager_attention(model):
            with eager_attention(model):  # nests
                model(tokens)
            assert eager_reason(attn) == "inside eager_attention"
            model(tokens)
        assert sdpa_calls == [] and eager_reason(attn) is None
        with pytest.raises(RuntimeError, match="boom"):
            with eager_attention(model):
                raise RuntimeError("boom")
        assert eager_reason(attn) is None
        model(tokens)
    assert len(sdpa_calls) == model.cfg.n_layers


def test_use_sdpa_installs_idempotently_and_removes(sdpa_calls):
    model = build("llama", seed=2)
    attn = model.blocks[0].attn
    first = attn.forward
    use_sdpa(model)
    assert attn.forward is first and is_installed(attn)
    use_sdpa(model, enabled=False)
    assert not any(is_installed(m) for m in attention_modules(model))
    with torch.no_grad():
        model(batch(False)[0])
    assert sdpa_calls == []
    use_sdpa(model)
    assert all(is_installed(m) for m in attention_modules(model))


def test_copies_keep_their_own_fast_path(models, sdpa_calls):
    model = models["gpt2"]
    tokens, _ = batch(False)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        for mine, theirs in zip(attention_modules(twin), attention_modules(model)):
            assert is_installed(mine) and mine.forward.module is mine and mine is not theirs
        sdpa_calls.clear()
        with torch.no_grad():
            torch.testing.assert_close(twin(tokens), model(tokens), rtol=0, atol=0)
        assert {id(m) for m in sdpa_calls} == (
            {id(m) for m in attention_modules(twin)} | {id(m) for m in attention_modules(model)})


def test_environment_variable(monkeypatch):
    model = build("gpt2", seed=1)
    use_sdpa(model, enabled=False)
    monkeypatch.setenv("INTERP_ATTENTION", "eager")
    assert not any(is_installed(m) for m in attention_modules(install_default(model)))
    monkeypatch.setenv("INTERP_ATTENTION", "SDPA")
    assert all(is_installed(m) for m in attention_modules(install_default(model)))
    monkeypatch.setenv("INTERP_ATTENTION", "flash")
    with pytest.raises(InterpError, match="INTERP_ATTENTION"):
        install_default(model)


def test_untested_transformer_lens_falls_back(monkeypatch):
    assert version_supported("3.9.0") and version_supported("3.9.7")
    assert not version_supported("3.8.2") and not version_supported("3.10.0")
    assert not version_supported("4.0.0") and not version_supported("")
    assert version_supported()  # the installed one is the tested one
    model = build("gpt2", seed=1)
    monkeypatch.setattr(attention, "transformer_lens_version", lambda: "3.10.0")
    monkeypatch.setattr(attention, "_warned", set())
    with pytest.warns(RuntimeWarning, match="tested with TransformerLens"):
        use_sdpa(model)
    assert not any(is_installed(m) for m in attention_modules(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        use_sdpa(model)  # warns once only


def test_loader_installs_by_default(tiny_model):
    assert attention_modules(tiny_model)
    assert all(is_installed(m) for m in attention_modules(tiny_model))


def test_bfloat16_keeps_dtype(sdpa_calls):
    """In bfloat16 the SDPA path stays in bfloat16 and is no further from the float32 logits
    than eager bfloat16 is (SDPA accumulates in float32; eager rounds its scores and pattern)."""
    model = build("llama", seed=5)
    tokens, mask = batch(True)
    with torch.no_grad():
        ref = model(tokens, attention_mask=mask)
        model.to(torch.bfloat16)
        _, cache = model.run_with_cache(tokens, attention_mask=mask,
                                        names_filter=lambda n: n.endswith("hook_z"))
        half = model(tokens, attention_mask=mask)
        with eager_attention(model):
            eager_half = model(tokens, attention_mask=mask)
    assert sdpa_calls and cache["z", 0].dtype == torch.bfloat16 and half.dtype == torch.bfloat16
    assert torch.isfinite(half).all()
    sdpa_err = (half.float() - ref).abs().max().item()
    eager_err = (eager_half.float() - ref).abs().max().item()
    assert sdpa_err <= 1.5 * eager_err, (sdpa_err, eager_err)
