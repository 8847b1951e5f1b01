"""NPO (Zhang et al. 2024): negative preference optimization on the forget answers.

loss = -(2/beta) * mean log sigmoid(beta * (NLL_theta - NLL_ref)) on forget sequences (NLL summed
per sequence, reference = the frozen model, precomputed once) + retain_weight * cross-entropy on
retain sequences. As in the paper, the sequences are the preference data's: a forget question and
its right answer (the loss counts the answer tokens only), raw and in the chat template; retain
questions with their right answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from interp.cost import Workload
from interp.data.folder import DataFolder
from interp.errors import InterpError
from interp.protections.base import ProtectionResult, ProtectionSpec, train_and_measure
from interp.protections.common import encode_pairs, select_params
from interp.results import to_jsonable
from interp.training import (
    TrainConfig,
    drawn_indices,
    lm_loss,
    pack,
    sample_indices,
    sequence_nll,
    sequence_nll_of,
)
from interp.training import train as train_loop


@dataclass
class Config:
    """NPO settings: beta, the retain loss's weight, learning rate, batch size and steps, the
    parameters trained, the seed, `max_len` in tokens, and the official trainer's choices: loss
    tokens, retain reduction, warm-up steps (None: 5% of the steps), gradient accumulation."""

    beta: float = 0.1
    retain_weight: float = 1.0
    lr: float = 1e-5
    batch_size: int = 8
    steps: int = 100
    params: str = "attn_mlp"
    seed: int = 0
    max_len: int = 64
    # the official trainer's choices (`docs/recipes.md`): NLL over prompt and answer ("all"),
    # the retain NLL summed per sequence ("sum"), warm-up steps, gradient accumulation
    loss_on: str = "response"  # "response" | "all"
    retain_reduction: str = "mean"  # "mean" per token | "sum" per sequence, mean over the batch
    warmup_steps: int | None = None  # None: 5% of the steps
    grad_accum: int = 1

    def __post_init__(self) -> None:
        if self.loss_on not in ("response", "all"):
            raise InterpError(f"npo loss_on must be 'response' or 'all', got {self.loss_on!r}")
        if self.retain_reduction not in ("mean", "sum"):
            raise InterpError(f"npo retain_reduction must be 'mean' or 'sum', got "
                              f"{self.retain_reduction!r}")


@dataclass
class Result(ProtectionResult):
    """NPO's result: accuracy before and after, the losses and the mean forget NLL per step."""

    method_name: ClassVar[str] = "npo"
    config: Config = field(default_factory=Config)
    forget_nll: list[float] = field(default_factory=list)  # mean forget NLL per step


def memory_steps(cfg: Config, config: dict, prompt_tokens: int) -> list:
    """The memory plan's step: a forget and a retain batch in one graph, every
    block weight trained (the reference's values are computed before)."""
    return [Workload("npo step", 2 * cfg.batch_size, cfg.max_len, "weights", "all",
                     note="forget + retain batch in one graph")]


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Training steps (`interp.cost`); the no-attack scores are counted by the caller."""
    return {"npo": cfg.steps}

def run(model: HookedTransformer, data, cfg: Config | None = None, *, out: Path | None = None,
        progress: bool = True, before=None, about: dict | None = None) -> Result:
    """NPO in place (see the module docstring and `train_and_measure`)."""
    return train_and_measure(model, data, cfg or Config(), train, Result, out=out,
                             progress=progress, before=before, about=about)


def npo_loss(nll: torch.Tensor, ref_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """The NPO loss -(2/beta) * mean log sigmoid(beta * (nll - ref_nll)), from per-sequence NLLs
    (batch,)."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - ref_nll)).mean()


def train(model: HookedTransformer, data: DataFolder, cfg: Config,
          run_dir: Path | None = None, progress: bool = True) -> tuple[list[float], dict]:
    """Train the model in place: NPO on the forget answers plus `retain_weight` x cross-entropy on
    the retain answers; returns the loss per step and extras (the forget NLL per step, the encoding
    counts, ...)."""
    device = model.cfg.device
    rows = data.preference()
    if not any(r["split"] == "forget" for r in rows) or not any(
            r["split"] == "retain" for r in rows):
        raise InterpError("NPO needs forget and retain rows in preference.jsonl")
    forget, f_enc = encode_pairs(model, [(r["prompt"], r["rejected"], chat) for r in rows
                                         if r["split"] == "forget" for chat in (False, True)],
                                 max_len=cfg.max_len, what="NPO forget")
    retain, r_enc = encode_pairs(model, [(r["prompt"], r["chosen"], chat) for r in rows
                                         if r["split"] == "retain" for chat in (False, True)],
                                 max_len=cfg.max_len, what="NPO retain")
    forget, retain = [x for x in forget if x], [x for x in retain if x]
    if cfg.loss_on == "all":  # every token after the first: prompt and answer
        forget, retain = [(ids, 0) for ids, _ in forget], [(ids, 0) for ids, _ in retain]
    model.eval()
    def forget_rows(step, micro):
        return sample_indices(len(forget), cfg.batch_size, cfg.seed, step, micro)

    # the reference NLL once (not a frozen copy per step), for the rows training will draw
    drawn = drawn_indices(forget_rows, cfg.steps, cfg.grad_accum)
    ref = sequence_nll_of(model, forget, drawn, device).to(device)
    params, names = select_params(model, cfg.params)

    def batch_at(step, micro):
        fi = forget_rows(step, micro)
        ri = sample_indices(len(retain), cfg.batch_size, cfg.seed, step, micro + 1000)
        return (fi, pack([forget[i][0] for i in fi], [forget[i][1] for i in fi], 0, device),
                pack([retain[i][0] for i in ri], [retain[i][1] for i in ri], 0, device))

    def loss_fn(b):
        fi, fb, rb = b
        nll = sequence_nll(model, fb)
        forget_loss = npo_loss(nll, ref[fi].to(nll.device), cfg.beta)
        retain_loss = (sequence_nll(model, rb).mean() if cfg.retain_reduction == "sum"
                       else lm_loss(model, rb))
        return forget_loss + cfg.retain_weight * retain_loss, {
            "forget_nll": nll.mean().item(), "retain": retain_loss.item()}

    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_frac=0.05, schedule="linear",
                       warmup_steps=cfg.warmup_steps, grad_accum=cfg.grad_accum,
                       seed=cfg.seed, desc="NPO", checkpoint_every=50, progress=progress,
                       fingerprint=json.dumps(to_jsonable(cfg), sort_keys=True))
    out = train_loop(params, loss_fn, batch_at, tcfg, run_dir=run_dir, param_names=names)
    return out.losses, {"forget_nll": [e["forget_nll"] for e in out.extras],
                        "encoding": {"forget": f_enc.to_json(), "retain": r_enc.to_json()}}


SPEC = ProtectionSpec(
    "npo", order=20, summary="NPO: negative preference optimization on the forget answers",
    presets={
        "smoke": Config(beta=0.1, retain_weight=3.0, lr=3e-3, batch_size=8, steps=200,
                        params="mlp"),
        "laptop": Config(beta=0.1, retain_weight=1.0, lr=1.5e-4, batch_size=8, steps=60,
                         params="mlp"),
        # docs/recipes.md: the official trainers' settings and where these differ
        "paper": Config(beta=0.1, retain_weight=2.0, lr=1e-5, batch_size=4, grad_accum=18,
                        steps=250, warmup_steps=150, max_len=1024, loss_on="all",
                        retain_reduction="sum"),
    })
