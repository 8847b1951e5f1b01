"""Export a hooked model back to a plain Hugging Face `transformers` folder.

Edited models (orthogonalized, RMU/NPO-trained, pruned, LoRA-merged) exist only as TransformerLens
`HookedTransformer`s; other tools (vLLM, lm-eval, `generate`) read Hugging Face folders. This
inverts TransformerLens' weight converters (`transformer_lens.pretrained.weight_conversions`) for
the weights `load_model` keeps unprocessed (no folding or centering), and rebuilds the HF config
from `model.cfg`, since the original `config.json` is not stored with the model. The exported folder
loads with `AutoModelForCausalLM.from_pretrained` to the hooked model's logits. Safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import einops
import torch
from transformer_lens import HookedTransformer

from interp.errors import InterpError
from interp.model.state import get_tokenizer

# TransformerLens architecture -> Hugging Face model_type
LLAMA_LIKE = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
              "Qwen2ForCausalLM": "qwen2", "GemmaForCausalLM": "gemma"}
SUPPORTED = (*LLAMA_LIKE, "GPT2LMHeadModel")
# the biases each Llama-like architecture can hold: q/k/v/o projections, MLP output
_BIAS_SLOTS = {"llama": ("q", "k", "v", "o", "down"), "qwen2": ("q", "k", "v")}


def _require(ok: bool, arch: str, what: str) -> None:
    if not ok:
        raise InterpError(f"cannot export this {arch} model: {what}")


def _nonzero(t: torch.Tensor) -> bool:
    return bool(t.detach().ne(0).any())


def _llama_like(p: dict[str, torch.Tensor], cfg: Any, kind: str):
    arch = cfg.original_architecture
    _require(cfg.normalization_type == "RMS", arch, "expected unfolded RMSNorm")
    _require(cfg.positional_embedding_type == "rotary" and not cfg.rotary_adjacent_pairs
             and cfg.rotary_dim in (None, cfg.d_head), arch, "expected full half-split rotary")
    _require(cfg.gated_mlp and not cfg.use_qk_norm and not cfg.use_normalization_before_and_after,
             arch, "unexpected block layout")
    _require(cfg.use_attn_scale and abs(cfg.attn_scale - cfg.d_head ** 0.5) < 1e-6, arch,
             "attention scale is not sqrt(d_head)")
    gemma = kind == "gemma"
    offset = 1.0 if gemma else 0.0  # GemmaRMSNorm multiplies by (1 + w); TL stores 1 + w
    kv = "_" if cfg.n_key_value_heads is not None else ""
    embed = p["embed.W_E"] / cfg.d_model ** 0.5 if gemma else p["embed.W_E"]
    sd = {"model.embed_tokens.weight": embed, "model.norm.weight": p["ln_final.w"] - offset}
    biases: dict[str, tuple[str, torch.Tensor]] = {}
    for i in range(cfg.n_layers):
        a, m, hf = f"blocks.{i}.attn.", f"blocks.{i}.mlp.", f"model.layers.{i}."
        sd[hf + "input_layernorm.weight"] = p[f"blocks.{i}.ln1.w"] - offset
        sd[hf + "post_attention_layernorm.weight"] = p[f"blocks.{i}.ln2.w"] - offset
        for proj, w in (("q", "W_Q"), ("k", kv + "W_K"), ("v", kv + "W_V")):
            sd[f"{hf}self_attn.{proj}_proj.weight"] = einops.rearrange(p[a + w], "n m h -> (n h) m")
            bias = p[a + w.replace("W_", "b_")].reshape(-1)
            biases[f"{hf}self_attn.{proj}_proj.bias"] = (proj, bias)
        sd[hf + "self_attn.o_proj.weight"] = einops.rearrange(p[a + "W_O"], "n h m -> m (n h)")
        biases[hf + "self_attn.o_proj.bias"] = ("o", p[a + "b_O"])
        sd[hf + "mlp.up_proj.weight"] = p[m + "W_in"].T
        sd[hf + "mlp.gate_proj.weight"] = p[m + "W_gate"].T
        sd[hf + "mlp.down_proj.weight"] = p[m + "W_out"].T
        biases[hf + "mlp.down_proj.bias"] = ("down", p[m + "b_out"])
        # TL adds b_in after act(gate) * up, which no HF gated MLP can express
        _require(not _nonzero(p[m + "b_in"]), arch, f"nonzero MLP b_in in block {i}")
    slots = _BIAS_SLOTS.get(kind, ())
    used = {slot for slot, b in biases.values() if _nonzero(b)}
    _require(used <= set(slots), arch, f"nonzero {sorted(used - set(slots))} biases, which "
             f"{arch} has no place for")
    attention_bias = kind == "llama" and bool(used & {"q", "k", "v", "o"})
    mlp_bias = kind == "llama" and "down" in used
    # Qwen2 always has q/k/v biases; Llama's config flags switch them on in groups
    written = set(slots) if kind == "qwen2" else (
        ({"q", "k", "v", "o"} if attention_bias else set()) | ({"down"} if mlp_bias else set()))
    sd.update({name: b for name, (slot, b) in biases.items() if slot in written})
    if mlp_bias:  # HF's mlp_bias also gives up/gate biases: TL has none, so zeros
        for i in range(cfg.n_layers):
            for proj in ("up", "gate"):
                sd[f"model.layers.{i}.mlp.{proj}_proj.bias"] = p["ln_final.w"].new_zeros(cfg.d_mlp)
    config: dict[str, Any] = dict(
        vocab_size=cfg.d_vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_key_value_heads or cfg.n_heads, head_dim=cfg.d_head,
        max_position_embeddings=cfg.n_ctx, rms_norm_eps=cfg.eps, hidden_act=cfg.act_fn,
        rope_theta=float(cfg.rotary_base))
    if kind == "llama":
        config.update(attention_bias=attention_bias, mlp_bias=mlp_bias)
        if cfg.use_NTK_by_parts_rope:
            config["rope_scaling"] = {
                "rope_type": "llama3", "factor": cfg.NTK_by_parts_factor,
                "low_freq_factor": cfg.NTK_by_parts_low_freq_factor,
                "high_freq_factor": cfg.NTK_by_parts_high_freq_factor,
                "original_max_position_embeddings": cfg.NTK_original_ctx_len}
    elif kind == "mistral":
        config["sliding_window"] = cfg.window_size if cfg.use_local_attn else None
    elif kind == "gemma":
        config["hidden_activation"] = cfg.act_fn
    return sd, config, "model.embed_tokens.weight"


def _gpt2(p: dict[str, torch.Tensor], cfg: Any):
    arch = cfg.original_architecture
    _require(cfg.normalization_type == "LN" and not cfg.final_rms and not cfg.gated_mlp
             and cfg.positional_embedding_type == "standard"
             and cfg.d_head * cfg.n_heads == cfg.d_model and cfg.n_key_value_heads is None,
             arch, "unexpected config (folded layer norms?)")
    sd = {"transformer.wte.weight": p["embed.W_E"], "transformer.wpe.weight": p["pos_embed.W_pos"],
          "transformer.ln_f.weight": p["ln_final.w"], "transformer.ln_f.bias": p["ln_final.b"]}
    for i in range(cfg.n_layers):
        b, a, m, hf = f"blocks.{i}.", f"blocks.{i}.attn.", f"blocks.{i}.mlp.", f"transformer.h.{i}."
        for i in (1, 2):
            sd[f"{hf}ln_{i}.weight"], sd[f"{hf}ln_{i}.bias"] = p[f"{b}ln{i}.w"], p[f"{b}ln{i}.b"]
        sd[hf + "attn.c_attn.weight"] = torch.cat(  # Conv1D: (in, out), out = [q | k | v]
            [einops.rearrange(p[a + w], "i m h -> m (i h)") for w in ("W_Q", "W_K", "W_V")], 1)
        sd[hf + "attn.c_attn.bias"] = torch.cat(
            [p[a + k].reshape(-1) for k in ("b_Q", "b_K", "b_V")])
        sd[hf + "attn.c_proj.weight"] = einops.rearrange(p[a + "W_O"], "i h m -> (i h) m")
        sd[hf + "attn.c_proj.bias"] = p[a + "b_O"]
        sd[hf + "mlp.c_fc.weight"], sd[hf + "mlp.c_fc.bias"] = p[m + "W_in"], p[m + "b_in"]
        sd[hf + "mlp.c_proj.weight"], sd[hf + "mlp.c_proj.bias"] = p[m + "W_out"], p[m + "b_out"]
    config = dict(vocab_size=cfg.d_vocab, n_embd=cfg.d_model, n_layer=cfg.n_layers,
                  n_head=cfg.n_heads, n_positions=cfg.n_ctx, n_inner=cfg.d_mlp,
                  activation_function=cfg.act_fn, layer_norm_epsilon=cfg.eps,
                  scale_attn_weights=cfg.use_attn_scale,
                  scale_attn_by_inverse_layer_idx=cfg.scale_attn_by_inverse_layer_idx)
    return sd, config, "transformer.wte.weight"


@torch.no_grad()
def to_hf_state_dict(model: HookedTransformer) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, config dict) of the equivalent plain transformers model.

    Tensors are contiguous, on the CPU, in the model's dtype; some may share memory with the
    model's parameters (do not edit them in place)."""
    from transformers import AutoConfig

    from interp.model.lora import has_lora

    if has_lora(model):
        raise InterpError("the model has LoRA adapters attached; merge them first "
                          "(interp.model.lora.merge_lora) and export the merged model")
    cfg = model.cfg
    arch = cfg.original_architecture
    if arch not in SUPPORTED:
        raise InterpError(f"cannot export architecture {arch}; export supports "
                          f"{', '.join(SUPPORTED)}")
    p = {name: t.detach() for name, t in model.named_parameters()}
    _require(not _nonzero(p["unembed.b_U"]), arch, f"nonzero unembedding bias b_U, which {arch} "
             "has no place for")
    if arch == "GPT2LMHeadModel":
        sd, config, embed_key = _gpt2(p, cfg)
        model_type = "gpt2"
    else:
        model_type = LLAMA_LIKE[arch]
        sd, config, embed_key = _llama_like(p, cfg, model_type)
    lm_head = p["unembed.W_U"].T
    tied = lm_head.shape == sd[embed_key].shape and torch.equal(lm_head, sd[embed_key])
    if not tied:  # e.g. orthogonalization edits W_E only
        sd["lm_head.weight"] = lm_head
    tok = get_tokenizer(model)
    dtype = next(iter(p.values())).dtype
    config.update(tie_word_embeddings=tied, architectures=[arch],
                  dtype=str(dtype).removeprefix("torch."),
                  bos_token_id=getattr(tok, "bos_token_id", None),
                  eos_token_id=getattr(tok, "eos_token_id", None),
                  pad_token_id=getattr(tok, "pad_token_id", None))
    config = AutoConfig.for_model(model_type, **config).to_dict()
    sd = {k: v.to("cpu", dtype).contiguous() for k, v in sd.items()}
    return sd, config


def export_hf(model: HookedTransformer, folder: str | Path) -> Path:
    """Write a plain transformers folder (config.json, model.safetensors, tokenizer files) that
    AutoModelForCausalLM.from_pretrained loads to the same logits as the hooked model."""
    from safetensors.torch import save_file

    from interp.store import atomic_write_text

    state, config = to_hf_state_dict(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / "model.safetensors")
    get_tokenizer(model).save_pretrained(str(folder))
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder
