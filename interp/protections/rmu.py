"""RMU (Li et al. 2024, the WMDP paper): scramble the forget activations at one layer.

At layer l (about a quarter of the depth; 7 of 32 for Zephyr), push the residual stream on forget
text towards c*u (u a fixed random unit vector) with MSE, while keeping it equal to the frozen
model's on retain text (weight alpha). Only the MLP output weights of layers l-2..l train, and the
forward pass stops after layer l. The paper's c = 6.5 is for Zephyr's residual scale; here c is
`steer_scale` times the layer's typical residual norm, measured on forget text and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from transformer_lens import HookedTransformer

from interp.cost import Workload
from interp.data.folder import DataFolder
from interp.protections.base import (
    ProtectionResult,
    ProtectionSpec,
    forget_outputs,
    train_and_measure,
)
from interp.protections.common import encode_texts, frozen_copy, select_params
from interp.training import TrainConfig, pack, sample_indices
from interp.training import train as train_loop


@dataclass
class Config:
    """RMU settings: the layer (None: `default_layer`), the steering scale (c = `steer_scale` x the
    layer's typical residual norm), alpha (the retain term's weight), learning rate, batch size and
    steps, the seed and `max_len` in tokens."""

    layer: int | None = None  # None: round(n_layers / 4.5) (7 of 32 for Zephyr)
    steer_scale: float = 1.0  # c = steer_scale * mean residual norm at the layer
    alpha: float = 1200.0
    lr: float = 5e-5
    batch_size: int = 4
    steps: int = 150
    seed: int = 0
    max_len: int = 64


@dataclass
class Result(ProtectionResult):
    """RMU's result: accuracy before and after, the losses, the layer and steering coefficient c,
    the typical residual norm it was scaled by, and raw continuations of forget prompts after
    training."""

    method_name: ClassVar[str] = "rmu"
    config: Config = field(default_factory=Config)
    layer: int = 0
    steer_coef: float = 0.0  # c
    typical_resid_norm: float = 0.0  # at `layer`, on forget text
    forget_outputs: list[dict] = field(default_factory=list)  # raw continuations after RMU


def memory_steps(cfg: Config, config: dict, prompt_tokens: int) -> list:
    """The memory plan's step: forget and retain batches through block l, W_out of layers l-2..l
    trained, the frozen copy held."""
    n = config["num_hidden_layers"]
    layer = cfg.layer if cfg.layer is not None else max(2, round(n / 4.5))
    first = max(0, layer - 2)
    return [Workload("rmu step", 2 * cfg.batch_size, cfg.max_len, "weights", "all", models=2,
                     stop_at=layer + 1,
                     params=tuple(f"blocks.{i}.mlp.W_out" for i in range(first, layer + 1)),
                     note=f"W_out of layers {first}-{layer}; the frozen copy")]


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Training steps (`interp.cost`); the no-attack scores are counted by the caller."""
    return {"rmu": cfg.steps}

def run(model: HookedTransformer, data, cfg: Config | None = None, *, out: Path | None = None,
        progress: bool = True, before=None, about: dict | None = None) -> Result:
    """Unlearn the forget corpus in place (see the module docstring and `train_and_measure`)."""
    return train_and_measure(model, data, cfg or Config(), train, Result, out=out,
                             progress=progress, before=before, about=about)


def default_layer(model: HookedTransformer) -> int:
    """RMU's default layer: round(n_layers / 4.5), at least 2 (7 of 32 for Zephyr)."""
    return max(2, round(model.cfg.n_layers / 4.5))


@torch.no_grad()
def _mean_norm(model: HookedTransformer, batches, layer: int) -> float:
    norms = []
    for b in batches:
        resid = model(b.tokens, stop_at_layer=layer + 1)
        mask = b.valid.bool()
        norms.append(resid.norm(dim=-1)[mask].double().mean().item())
    return float(sum(norms) / len(norms))


def rmu_loss(model: HookedTransformer, frozen: HookedTransformer, fb, rb, layer: int,
             target: torch.Tensor, alpha: float):
    """(loss, forget term, retain term): the block-`layer` output pushed towards `target` on
    the forget batch and kept at the frozen model's on the retain batch (masked MSE); the
    forward passes stop after that block."""
    fmask = fb.valid.unsqueeze(-1).to(model.cfg.dtype)
    rmask = rb.valid.unsqueeze(-1).to(model.cfg.dtype)
    h_f = model(fb.tokens, stop_at_layer=layer + 1)
    forget_loss = (((h_f - target) ** 2) * fmask).sum() / (fmask.sum() * h_f.shape[-1])
    h_r = model(rb.tokens, stop_at_layer=layer + 1)
    with torch.no_grad():
        h_r0 = frozen(rb.tokens, stop_at_layer=layer + 1)
    retain_loss = (((h_r - h_r0) ** 2) * rmask).sum() / (rmask.sum() * h_r.shape[-1])
    return forget_loss + alpha * retain_loss, forget_loss, retain_loss


def train(model: HookedTransformer, data: DataFolder, cfg: Config,
          run_dir: Path | None = None, progress: bool = True) -> tuple[list[float], dict]:
    """Unlearn the forget corpus in place; returns the losses and the measured scale."""
    layer = cfg.layer if cfg.layer is not None else default_layer(model)
    forget = encode_texts(model, data.corpus("forget_corpus"), cfg.max_len)
    retain = encode_texts(model, data.corpus("retain_corpus"), cfg.max_len)
    device = model.cfg.device

    def batch(seqs, step, micro):
        idx = sample_indices(len(seqs), cfg.batch_size, cfg.seed, step, micro)
        return pack([seqs[i] for i in idx], [0] * len(idx), 0, device)

    probe = [batch(forget, s, 7) for s in range(8)]
    typical = _mean_norm(model, probe, layer)
    coef = cfg.steer_scale * typical
    gen = torch.Generator().manual_seed(cfg.seed)
    u = torch.rand(model.cfg.d_model, generator=gen)
    target = (coef * u / u.norm()).to(device=device, dtype=model.cfg.dtype)

    frozen = frozen_copy(model)
    params, names = select_params(model, "mlp_out", list(range(max(0, layer - 2), layer + 1)))
    def loss_fn(pair):
        loss, forget_loss, retain_loss = rmu_loss(model, frozen, *pair, layer, target, cfg.alpha)
        return loss, {"forget": forget_loss.item(), "retain": retain_loss.item()}

    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_frac=0.0, schedule="constant",
                       seed=cfg.seed, desc="RMU", checkpoint_every=50, progress=progress,
                       max_grad_norm=None)
    out = train_loop(params, loss_fn,
                     lambda s, m: (batch(forget, s, m), batch(retain, s, m + 1000)),
                     tcfg, run_dir=run_dir, param_names=names)
    return out.losses, {"layer": layer, "steer_coef": coef, "typical_resid_norm": typical,
                        "forget_outputs": forget_outputs(model, data)}


SPEC = ProtectionSpec(
    "rmu", order=10, summary="RMU: scramble the forget activations at one layer",
    trains_on="corpus",
    presets={
        "smoke": Config(layer=3, steer_scale=8.0, alpha=100.0, lr=3e-2, batch_size=8, steps=300),
        "laptop": Config(steer_scale=4.0, alpha=100.0, lr=1e-3, batch_size=8, steps=150),
        # the paper preset loads the public cais/Zephyr_RMU (`external`); trained on request
        "paper": Config(layer=7, steer_scale=1.0, alpha=1200.0, lr=5e-5, batch_size=4,
                        steps=150, max_len=512),
    })
