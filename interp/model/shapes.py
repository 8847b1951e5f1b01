"""Models of a given shape with random weights, for measuring cost before downloading anything.

A shape is a Hugging Face `config.json` (as a dict): "zephyr" (Zephyr-7B / Mistral-7B: 32 layers,
d_model 4096, 32 heads with 8 key/value heads, d_mlp 14336, vocab 32000), "tiny" (the same
architecture at toy size, for CPU tests), a `config.json` file, or a folder holding one (any
checkpoint's shape without its weights). The model is built directly on the target device with
TransformerLens' random initialisation; its tokenizer is a byte-level BPE trained offline on the
bundled unrelated corpus (ids below the model's vocabulary), with a Zephyr-style chat template,
so every stage runs its real tokenization and chat code on text of realistic length.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from interp.errors import InterpError
from interp.model.attention import install_default
from interp.model.load import (
    _attach_tokenizer,
    cache_root,
    hooked_config,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)

_MISTRAL = {"architectures": ["MistralForCausalLM"], "model_type": "mistral",
            "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}

SHAPES: dict[str, dict] = {
    "zephyr": {**_MISTRAL, "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
               "max_position_embeddings": 32768, "sliding_window": 4096},
    "tiny": {**_MISTRAL, "vocab_size": 4096, "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 2048, "sliding_window": None},
}

ZEPHYR_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n"
                   "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def shape_config(shape: str | Path) -> dict:
    """A named shape, a config.json file, or a folder with one."""
    if str(shape) in SHAPES:
        return dict(SHAPES[str(shape)])
    path = Path(shape)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise InterpError(f"unknown shape {str(shape)!r}: use one of {sorted(SHAPES)}, a "
                          "config.json or a folder with one")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InterpError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict) or not config.get("architectures"):
        raise InterpError(f"{path}: a Hugging Face config.json with 'architectures' is needed")
    return config


def parameter_count(config: dict) -> int:
    """Weights of a Llama/Mistral-style decoder from its config (embeddings and norms included;
    7.24 billion for Zephyr-7B); for other architectures an estimate by the same formula."""
    d, m, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    n_layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2
    mlp = 3 * d * m
    embed = v * d * (1 if config.get("tie_word_embeddings") else 2)
    return n_layers * (attn + mlp + 2 * d) + embed + d


def synthetic_tokenizer(vocab_size: int, size: int = 4000):
    """A byte-level BPE trained on the bundled unrelated passages (no download), saved once under
    the cache folder (TransformerLens reloads a tokenizer from its folder)."""
    import os
    import tempfile

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from interp.data.unrelated import load_unrelated

    size = min(size, vocab_size)
    folder = cache_root() / f"synthetic-tokenizer-v2-{size}"
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder)

    special = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([*load_unrelated(), "x " * 64], trainer)  # GCG's "x x x" start
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
    fast.chat_template = ZEPHYR_TEMPLATE
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        fast.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)  # atomic; a concurrent writer may have won
        except OSError:
            pass
        Path(tmp).mkdir(exist_ok=True)  # TemporaryDirectory removes it again
    return load_tokenizer(folder)


def random_model(shape: str | Path, *, device=None, dtype=None, seed: int = 0,
                 n_devices: int = 1) -> HookedTransformer:
    """A HookedTransformer of `shape` with random weights, built on `device` (SDPA attention as
    `interp.model.load` builds it)."""
    config = shape_config(shape)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    cfg = hooked_config(config, device=dev, dtype=dt, n_devices=n_devices)
    cfg.init_weights, cfg.seed = True, seed
    tokenizer = synthetic_tokenizer(cfg.d_vocab)
    torch.manual_seed(seed)
    with torch.device(dev if n_devices == 1 else "cpu"):
        model = install_default(HookedTransformer(cfg, tokenizer=None, move_to_device=True))
    if n_devices > 1:
        from interp.model.placement import place_blocks

        place_blocks(model)
    _attach_tokenizer(model, tokenizer)
    model.eval()
    return model
