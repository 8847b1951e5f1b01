"""DPO refusal training (the paper's safety-training baseline).

Preference data: forget question -> a refusal preferred over the right answer; retain question ->
the right answer preferred over a wrong one. Each pair is trained both as raw text and inside the
chat template, so the refusal shows in chat and the right answer loses ground in raw scoring.
loss = -log sigmoid(beta * [(logp_theta(c) - logp_ref(c)) - (logp_theta(r) - logp_ref(r))]),
log-probs summed over the response tokens, reference = the frozen model (precomputed once).
`forget_frac` sets the share of each batch drawn from the forget pairs (None: uniform over all
pairs, where the retain pairs outnumber them); a small beta keeps the loss from saturating once the
refusal is preferred, so the answer itself keeps being pushed down. `sft_weight` > 0 adds that
times the chosen responses' mean per-token NLL (DPO with an NLL term on the preferred response, as
in Pang et al. 2024): a model that has never seen a refusal (the smoke model) learns to say one.
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
from interp.protections.base import (
    ProtectionResult,
    ProtectionSpec,
    refusal_rate,
    train_and_measure,
)
from interp.protections.common import encode_pairs, select_params
from interp.results import to_jsonable
from interp.training import (
    TrainConfig,
    batch_rng,
    drawn_indices,
    pack,
    sample_indices,
    sequence_nll,
    sequence_nll_of,
)
from interp.training import train as train_loop


@dataclass
class Config:
    """DPO settings: beta, learning rate, batch size and steps, the parameters trained, the forget
    share of each batch (None: uniform over all pairs), the SFT term's weight, the seed, `max_len`
    in tokens, warm-up steps (None: 5% of the steps) and gradient accumulation."""

    beta: float = 0.1
    lr: float = 1e-5
    batch_size: int = 8
    steps: int = 100
    params: str = "attn_mlp"
    forget_frac: float | None = None
    sft_weight: float = 0.0
    seed: int = 0
    max_len: int = 160
    warmup_steps: int | None = None  # None: 5% of the steps (the official scripts: 150)
    grad_accum: int = 1  # effective batch = batch_size x grad_accum (the official: 32)

    def __post_init__(self) -> None:
        if self.forget_frac is not None and not (
                isinstance(self.forget_frac, (int, float)) and 0.0 <= self.forget_frac <= 1.0):
            raise InterpError(f"dpo forget_frac must be a number from 0 to 1 or null, got "
                              f"{self.forget_frac!r}")


@dataclass
class Result(ProtectionResult):
    """DPO's result: accuracy before and after, the losses, the mean reward margin per step, and how
    often its chat answers to forget prompts refuse."""

    method_name: ClassVar[str] = "dpo"
    config: Config = field(default_factory=Config)
    margins: list[float] = field(default_factory=list)  # mean reward margin per step
    refusal: dict = field(default_factory=dict)  # chat answers to forget prompts that refuse


def memory_steps(cfg: Config, config: dict, prompt_tokens: int) -> list:
    """The memory plan's step: a chosen and a rejected batch in one graph, every
    block weight trained (the reference's values are computed before)."""
    return [Workload("dpo step", 2 * cfg.batch_size, cfg.max_len, "weights", "all",
                     note="chosen + rejected batch in one graph")]


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Training steps (`interp.cost`); the no-attack scores are counted by the caller."""
    return {"dpo": cfg.steps}

def run(model: HookedTransformer, data, cfg: Config | None = None, *, out: Path | None = None,
        progress: bool = True, before=None, about: dict | None = None) -> Result:
    """DPO in place (see the module docstring and `train_and_measure`)."""
    return train_and_measure(model, data, cfg or Config(), train, Result, out=out,
                             progress=progress, before=before, about=about)


def dpo_loss(pol_c, pol_r, ref_c, ref_r, beta: float) -> torch.Tensor:
    """Inputs are summed log-probs of chosen (c) and rejected (r) responses."""
    return -F.logsigmoid(beta * ((pol_c - ref_c) - (pol_r - ref_r))).mean()


def chosen_nll(logp_chosen: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean over responses of each response's per-token NLL (the `sft_weight` term)."""
    return (-logp_chosen / loss_mask.sum(dim=1).clamp(min=1)).mean()


def build_pairs(model: HookedTransformer, rows: list[dict], max_len: int = 160):
    """Token pairs, forget rows first; returns (pairs, number of forget pairs, Encoding). A pair
    whose chosen or rejected response keeps no token within `max_len` is dropped (counted)."""
    rows = sorted(rows, key=lambda r: r.get("split") != "forget")
    both = [(row, chat) for row in rows for chat in (False, True)]
    texts = [(row["prompt"], row[key], chat) for row, chat in both
             for key in ("chosen", "rejected")]
    encoded, enc = encode_pairs(model, texts, max_len=max_len, what="DPO")
    pairs, n_forget, dropped = [], 0, 0
    for i, (row, _) in enumerate(both):
        c, r = encoded[2 * i], encoded[2 * i + 1]
        if c is None or r is None:
            dropped += 1
            continue
        pairs.append((c[0], c[1], r[0], r[1]))
        n_forget += row.get("split") == "forget"
    if not pairs:
        raise InterpError(f"no DPO pair keeps both responses within max_len {max_len}")
    enc.dropped, enc.kept = dropped, len(pairs)
    enc.rows = len(both)
    return pairs, n_forget, enc


def mixed_indices(n: int, n_forget: int, k: int, frac: float | None, seed: int, step: int,
                  micro: int = 0) -> list[int]:
    """k pair indices (forget pairs are 0..n_forget-1), each a forget pair with probability
    `frac`; a pure function of (seed, step, micro). frac None: uniform over all n."""
    if frac is None or n_forget in (0, n):
        return sample_indices(n, k, seed, step, micro)
    rng = batch_rng(seed, step, micro)
    return [rng.randrange(n_forget) if rng.random() < frac else rng.randrange(n_forget, n)
            for _ in range(k)]


def reference_logps(model, pairs, which, device) -> torch.Tensor:
    """(n_pairs, 2) log-probabilities (chosen, rejected) of the pairs in `which` under the
    model as it is (the reference), batched by length; NaN rows for pairs never drawn."""
    seqs = [(p[0], p[1]) for p in pairs] + [(p[2], p[3]) for p in pairs]
    which = sorted(set(which))
    nll = sequence_nll_of(model, seqs, which + [len(pairs) + i for i in which], device)
    return torch.stack([-nll[: len(pairs)], -nll[len(pairs):]], dim=1)


def train(model: HookedTransformer, data: DataFolder, cfg: Config,
          run_dir: Path | None = None, progress: bool = True) -> tuple[list[float], dict]:
    """Train the model in place on the preference pairs, raw and in chat; returns the loss per step
    and extras (the reward margins, the encoding counts, ...)."""
    device = model.cfg.device
    pairs, n_forget, enc = build_pairs(model, data.preference(), cfg.max_len)
    model.eval()
    def rows_at(step, micro):
        return mixed_indices(len(pairs), n_forget, cfg.batch_size, cfg.forget_frac, cfg.seed,
                             step, micro)

    # the reference once (not a frozen copy per step), for the pairs training will draw
    drawn = drawn_indices(rows_at, cfg.steps, cfg.grad_accum)
    ref = reference_logps(model, pairs, drawn, device).to(device)
    params, names = select_params(model, cfg.params)

    def batch_at(step, micro):
        idx = rows_at(step, micro)
        chunk = [pairs[i] for i in idx]
        seqs = [p[0] for p in chunk] + [p[2] for p in chunk]
        firsts = [p[1] for p in chunk] + [p[3] for p in chunk]
        return idx, pack(seqs, firsts, 0, device)

    def loss_fn(b):
        idx, batch = b
        logp = -sequence_nll(model, batch)
        n = len(idx)
        r = ref[idx].to(logp.device)
        loss = dpo_loss(logp[:n], logp[n:], r[:, 0], r[:, 1], cfg.beta)
        margin = ((logp[:n] - r[:, 0]) - (logp[n:] - r[:, 1])).mean().item()
        if not cfg.sft_weight:
            return loss, {"margin": margin}
        sft = chosen_nll(logp[:n], batch.loss_mask[:n])
        return loss + cfg.sft_weight * sft, {"margin": margin, "sft": sft.item()}

    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_frac=0.05, schedule="linear",
                       warmup_steps=cfg.warmup_steps, grad_accum=cfg.grad_accum,
                       seed=cfg.seed, desc="DPO", checkpoint_every=50, progress=progress,
                       fingerprint=json.dumps(to_jsonable(cfg), sort_keys=True))
    out = train_loop(params, loss_fn, batch_at, tcfg, run_dir=run_dir, param_names=names)
    return out.losses, {"margins": [e["margin"] for e in out.extras], "encoding": enc.to_json(),
                        "refusal": refusal_rate(model, data)}


SPEC = ProtectionSpec(
    "dpo", order=30, summary="DPO refusal training (the safety-training baseline)",
    presets={
        # the smoke model has never seen a refusal: an NLL term on it teaches one
        "smoke": Config(beta=0.01, lr=2e-3, batch_size=8, steps=450, params="mlp",
                        forget_frac=0.8, sft_weight=1.0),
        "laptop": Config(beta=0.02, lr=2e-4, batch_size=8, steps=50, params="mlp",
                         forget_frac=0.7),
        "paper": Config(beta=0.1, lr=5e-6, batch_size=4, grad_accum=8, steps=250,
                        warmup_steps=150, max_len=1024, forget_frac=0.5),
    })
