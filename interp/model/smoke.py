"""The smoke model: a tiny Llama-style hooked model trained from scratch on the fact corpora.

It uses the embedded model's tokenizer and the toolkit's one training loop, and learns the smoke
preset's facts in about a minute on a CPU, so the whole pipeline (protections, attacks, the
reproduction) runs in the test suite on a model that really knows something.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from transformer_lens import HookedTransformer, HookedTransformerConfig

from interp.model.load import build_hooked, resolve_device, save_model
from interp.padding import pad_id
from interp.training import TrainConfig, lm_loss, pack, sample_indices, seed_everything, train


@dataclass
class SmokeConfig:
    """The smoke model's size (layers, widths, context) and its training run (steps, batch size,
    learning rate, seed)."""

    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    n_ctx: int = 256
    steps: int = 200
    batch_size: int = 32
    lr: float = 6e-3
    seed: int = 0


def smoke_hooked_config(tokenizer, cfg: SmokeConfig, device) -> HookedTransformerConfig:
    """The TransformerLens config of the smoke model: a Llama-style block (RMS norm, rotary, gated
    SiLU MLP) over the tokenizer's vocabulary."""
    return HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
        d_head=cfg.d_model // cfg.n_heads, d_mlp=cfg.d_mlp, n_ctx=cfg.n_ctx,
        d_vocab=len(tokenizer), act_fn="silu", normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=cfg.d_model // cfg.n_heads,
        rotary_adjacent_pairs=False, final_rms=True, gated_mlp=True, eps=1e-5,
        original_architecture="LlamaForCausalLM", default_prepend_bos=False,
        device=str(device), seed=cfg.seed, init_weights=True,
    )


def train_smoke_model(
    texts: Sequence[str], tokenizer, cfg: SmokeConfig | None = None, *, device=None,
    out: Path | None = None, progress: bool = True,
) -> HookedTransformer:
    """Train the tiny model on `texts`; with `out`, checkpoint there and save the final model."""
    cfg = cfg or SmokeConfig()
    device = resolve_device(device)
    seed_everything(cfg.seed)
    model = build_hooked(smoke_hooked_config(tokenizer, cfg, device), tokenizer)
    encoded = [tokenizer(t)["input_ids"][: cfg.n_ctx] for t in texts]
    pad = pad_id(tokenizer)

    def batch_at(step: int, micro: int):
        idx = sample_indices(len(encoded), cfg.batch_size, cfg.seed, step, micro)
        return pack([encoded[i] for i in idx], [0] * len(idx), pad, device)

    names = [n for n, _ in model.named_parameters()]
    train_cfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_frac=0.05, schedule="cosine",
                            weight_decay=0.0, seed=cfg.seed, desc="smoke model",
                            checkpoint_every=100, progress=progress)
    model.train()
    train(list(model.parameters()), lambda b: lm_loss(model, b), batch_at, train_cfg,
          run_dir=out / "train" if out else None, param_names=names)
    model.eval()
    if out is not None:
        save_model(model, out, meta={"smoke": asdict(cfg)})
    return model
