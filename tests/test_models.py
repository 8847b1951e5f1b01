"""The loader against Hugging Face: same log-probs for every architecture we convert."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from interp.errors import InterpError
from interp.model.load import get_tokenizer, load_model, save_model

from .conftest import save_tiny_hf, tiny_configs

TEXT = "The capital of France is Paris, and the capital of Spain is"


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma", "gpt2", "gpt_neox"])
def test_hooked_logprobs_match_hf(arch, tmp_path, bpe_tokenizer):
    folder = save_tiny_hf(tmp_path / arch, tiny_configs(len(bpe_tokenizer))[arch], bpe_tokenizer)
    hooked = load_model(folder, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = bpe_tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        ours = hooked(ids).log_softmax(-1)
        ref = hf(ids).logits.log_softmax(-1)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_saved_model_round_trip(tiny_model, tmp_path):
    folder = save_model(tiny_model, tmp_path / "saved")
    again = load_model(folder, device="cpu")
    ids = get_tokenizer(tiny_model)(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(again(ids), tiny_model(ids), rtol=0, atol=0)
    assert get_tokenizer(again)(TEXT)["input_ids"] == get_tokenizer(tiny_model)(TEXT)["input_ids"]


def test_tokenizer_override(tiny_llama_dir, tmp_path, bpe_tokenizer):
    # a model folder without tokenizer files, as cais/Zephyr_RMU ships, plus a tokenizer folder
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_llama_dir.iterdir():
        if f.name in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(f, bare / f.name)
    with pytest.raises(InterpError):
        load_model(bare, device="cpu")
    model = load_model(bare, device="cpu", tokenizer=tiny_llama_dir)
    assert get_tokenizer(model)("hello")["input_ids"] == bpe_tokenizer("hello")["input_ids"]


def test_truncated_weights_give_clear_error(tiny_model, tmp_path):
    folder = save_model(tiny_model, tmp_path / "saved")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InterpError, match="corrupt or truncated"):
        load_model(folder, device="cpu")


def test_unknown_model_name():
    with pytest.raises(InterpError, match="unknown model"):
        load_model("no-such-model-xyz", device="cpu")


def test_missing_gguf(tmp_path):
    with pytest.raises(InterpError, match="GGUF file not found"):
        load_model(tmp_path / "missing.gguf", device="cpu")


def test_weights_are_unprocessed(tiny_llama_dir, tiny_model):
    # no folding or centering: the hooked matrices are the checkpoint's own
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    q = hf.model.layers[0].self_attn.q_proj.weight  # (n_heads*d_head, d_model)
    ours = tiny_model.blocks[0].attn.W_Q  # (n_heads, d_model, d_head)
    ref = q.T.reshape(64, 4, 16).permute(1, 0, 2)
    torch.testing.assert_close(ours, ref)
    ln = hf.model.layers[0].input_layernorm.weight
    torch.testing.assert_close(tiny_model.blocks[0].ln1.w, ln)


def test_multi_device_placement_is_wired(tiny_llama_dir):
    """`n_devices` goes to TransformerLens' own placement, which needs that many GPUs: without
    them a clear error; the split it makes (blocks in contiguous runs, n_layers/N per GPU) is
    TransformerLens' `get_device_for_block_index`, checked on a stand-in config."""
    from types import SimpleNamespace

    import torch
    from transformer_lens.utilities.multi_gpu import get_device_for_block_index

    from interp.errors import InterpError
    from interp.model.load import load_model

    if torch.cuda.device_count() < 2:
        with pytest.raises(InterpError, match="GPUs"):
            load_model(tiny_llama_dir, device="cpu", n_devices=2)
    cfg = SimpleNamespace(device="cuda", n_layers=32, n_devices=4)
    placed = [get_device_for_block_index(i, cfg).index for i in range(32)]
    assert placed == [i // 8 for i in range(32)]


def test_blocks_are_placed_where_the_forward_looks_for_them(tiny_llama_dir):
    """`place_blocks` with a stand-in rule (the second half of the blocks on the meta device, as
    a second GPU would be): the embedding with block 0, each block on its device, the final norm
    and unembedding with the last block. (TransformerLens 3.9's own move puts every module on
    one device, and a converted model stayed on the CPU.)"""
    import torch

    from interp.model.load import load_model
    from interp.model.placement import place_blocks

    model = load_model(tiny_llama_dir, device="cpu")
    n = model.cfg.n_layers
    rule = lambda i, cfg: torch.device("cpu" if i < n // 2 else "meta")  # noqa: E731
    place_blocks(model, rule)
    for i, block in enumerate(model.blocks):
        assert {p.device.type for p in block.parameters()} == {rule(i, None).type}
    assert model.embed.W_E.device.type == "cpu"
    # the final norm and unembedding with block 0, their input brought there by a pre-hook
    assert model.unembed.W_U.device.type == "cpu"
    assert {p.device.type for p in model.ln_final.parameters()} <= {"cpu"}
    from interp.model.placement import to_own_device

    assert to_own_device in model.ln_final._forward_pre_hooks.values()
    assert to_own_device in model.unembed._forward_pre_hooks.values()
