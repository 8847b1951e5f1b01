"""Export to a plain transformers folder: the exported model's logits equal the hooked model's."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from interp.errors import InterpError
from interp.model.export import export_hf, to_hf_state_dict
from interp.model.load import get_tokenizer, load_model
from interp.model.state import copy_model

from .conftest import save_tiny_hf, tiny_configs

TEXTS = ["The capital of France is Paris, and the capital of Spain is",
         "A. first B. second C. third D. fourth Answer:",
         "hello"]


def _configs(vocab: int) -> dict:
    """The architectures the export writes (GPT-NeoX: loaded, not exported)."""
    return {k: v for k, v in tiny_configs(vocab).items() if k != "gpt_neox"}


def _hooked_logits(model, text: str) -> torch.Tensor:
    ids = get_tokenizer(model)(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids)


def _hf_logits(hf, tok, text: str) -> torch.Tensor:
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return hf(ids).logits


def _assert_same_logits(model, out) -> float:
    hf, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    # a missing key would be initialised at random: every weight must come from the export
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf.eval()
    tok = get_tokenizer(model)
    worst = 0.0
    for text in TEXTS:
        ours, ref = _hooked_logits(model, text), _hf_logits(hf, tok, text)
        torch.testing.assert_close(ref, ours, rtol=0, atol=1e-4)
        worst = max(worst, (ref - ours).abs().max().item())
    return worst


@pytest.fixture(scope="module")
def hooked(tmp_path_factory, bpe_tokenizer):
    """arch -> hooked model loaded from a tiny random HF folder (built on first use)."""
    cache: dict = {}

    def get(arch: str):
        if arch not in cache:
            folder = tmp_path_factory.mktemp(f"export-src-{arch}")
            save_tiny_hf(folder, _configs(len(bpe_tokenizer))[arch], bpe_tokenizer)
            cache[arch] = load_model(folder, device="cpu")
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma", "gpt2"])
def test_export_matches_hooked_logits(arch, hooked, tmp_path):
    model = hooked(arch)
    out = export_hf(model, tmp_path / "hf")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not [f for f in out.iterdir() if f.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    print(f"{arch}: max |logit diff| = {_assert_same_logits(model, out):.2e}")
    # the exported folder also loads back through interp to the same logits
    again = load_model(out, device="cpu")
    torch.testing.assert_close(_hooked_logits(again, TEXTS[0]), _hooked_logits(model, TEXTS[0]),
                               rtol=0, atol=1e-4)


def test_export_reflects_weight_edit(hooked, tmp_path):
    from interp.attacks.directions import orthogonalize_weights

    original = hooked("llama")
    model = copy_model(original)
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        orthogonalize_weights(model, direction / direction.norm())
    out = export_hf(model, tmp_path / "edited")
    _assert_same_logits(model, out)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    exported = _hf_logits(hf, get_tokenizer(model), TEXTS[0])
    assert (exported - _hooked_logits(original, TEXTS[0])).abs().max() > 1e-2


def test_edited_embedding_unties_lm_head(tmp_path, bpe_tokenizer):
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=len(bpe_tokenizer), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=256, tie_word_embeddings=True)
    model = load_model(save_tiny_hf(tmp_path / "tied", cfg, bpe_tokenizer), device="cpu")
    state, config = to_hf_state_dict(model)
    assert config["tie_word_embeddings"] and "lm_head.weight" not in state
    _assert_same_logits(model, export_hf(model, tmp_path / "tied-out"))
    with torch.no_grad():
        model.embed.W_E.mul_(1.5)  # W_E only: W_U stays, so the export must untie them
    state, config = to_hf_state_dict(model)
    assert not config["tie_word_embeddings"] and "lm_head.weight" in state
    _assert_same_logits(model, export_hf(model, tmp_path / "untied-out"))


def test_export_refuses_lora(hooked, tmp_path):
    from interp.model.lora import LoRAConfig, lora_adapters

    model = copy_model(hooked("llama"))
    with lora_adapters(model, LoRAConfig(rank=2)):
        with pytest.raises(InterpError, match="merge"):
            export_hf(model, tmp_path / "lora")
    assert not (tmp_path / "lora" / "model.safetensors").exists()


def test_export_refuses_unembed_bias_and_unknown_arch(hooked, tmp_path):
    model = copy_model(hooked("llama"))
    with torch.no_grad():
        model.unembed.b_U.add_(1.0)
    with pytest.raises(InterpError, match="b_U"):
        to_hf_state_dict(model)
    model = copy_model(hooked("llama"))
    model.cfg.original_architecture = "FalconForCausalLM"
    with pytest.raises(InterpError, match="LlamaForCausalLM") as info:
        export_hf(model, tmp_path / "falcon")
    assert "\n" not in str(info.value)


def test_llama_biases_export_and_mistral_biases_refused(hooked, tmp_path):
    # biases a Llama config can switch on (attention_bias, mlp_bias) are exported...
    model = copy_model(hooked("llama"))
    attn, mlp = model.blocks[0].attn, model.blocks[1].mlp
    with torch.no_grad():
        for b in (attn.b_Q, attn._b_K, attn._b_V, attn.b_O, mlp.b_out):
            b.add_(0.1 * torch.randn_like(b))
    _, config = to_hf_state_dict(model)
    assert config["attention_bias"] and config["mlp_bias"]
    _assert_same_logits(model, export_hf(model, tmp_path / "biased"))
    # ...one Mistral has no place for is refused, as is TL's gated-MLP b_in
    model = copy_model(hooked("mistral"))
    with torch.no_grad():
        model.blocks[0].attn.b_O.add_(1.0)
    with pytest.raises(InterpError, match="no place"):
        to_hf_state_dict(model)
    model = copy_model(hooked("llama"))
    with torch.no_grad():
        model.blocks[0].mlp.b_in.add_(1.0)
    with pytest.raises(InterpError, match="b_in"):
        to_hf_state_dict(model)
