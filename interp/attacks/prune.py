"""`interp attack prune`: SNIP scores on forget and utility data, set-difference pruning over a
(p, q) grid, the best cell within a retain floor, figures (pruned fraction per layer, the grid).

Forget data: the forget questions with their right answers (loss on the answer only). Utility
data: retain questions with their right answers and unrelated text (loss on its last k tokens).
Each finished grid cell is written to `grid.json` at once (atomically), so an interrupted grid
resumes where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from interp.data.questions import load_questions
from interp.errors import InterpError
from interp.evaluate import evaluate
from interp.plots import heatmap, layer_lines, save_figure
from interp.prune import (
    Thresholds,
    check_fractions,
    grid_mask,
    neuron_scores,
    neuron_set_difference,
    neuron_weight_masks,
    pruned,
    snip_scores,
)
from interp.store import read_json, write_json
from interp.training import TokenBatch, pack
from interp.unlearn.common import ProtectData, encode_pair, encode_texts

PAPER_GRID = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2)


@dataclass
class PruneAttackConfig:
    level: str = "neuron"  # "neuron" (whole MLP neurons) or "weight" (every attn/MLP weight)
    grid: tuple[float, ...] = PAPER_GRID  # cells: every (q, p) from it with q <= p
    n_forget: int = 64  # prompt/response pairs scored for the forget SNIP
    n_utility: int = 64  # retain pairs, and as many unrelated texts, for the utility SNIP
    last_k: int = 32  # raw text: loss on its last k tokens only
    batch_size: int = 8
    eval_limit: int | None = 100  # questions per split scored for each cell
    retain_drop: float = 0.10  # a cell qualifies if retain >= no-attack retain - this
    max_len: int = 128


@dataclass
class PruneCell:
    q: float
    p: float
    forget: float
    retain: float
    pruned_frac: float  # of neurons (neuron level) or of weights (weight level)


@dataclass
class PruneData:
    forget: list[TokenBatch]
    utility: list[TokenBatch]
    n_forget: int
    n_utility: int


def snip_data(model: HookedTransformer, data_dir: Path, cfg: PruneAttackConfig) -> PruneData:
    data = ProtectData(Path(data_dir))
    rows = data.preference()
    device = model.cfg.device
    forget = [encode_pair(model, r["prompt"], r["rejected"], chat=False, max_len=cfg.max_len)
              for r in rows if r["split"] == "forget"][: cfg.n_forget]
    retain = [encode_pair(model, r["prompt"], r["chosen"], chat=False, max_len=cfg.max_len)
              for r in rows if r["split"] == "retain"][: cfg.n_utility]
    texts = encode_texts(model, data.corpus("unrelated")[: cfg.n_utility], max_len=cfg.max_len)
    texts = [t for t in texts if len(t) > 1]
    utility = retain + [(t, max(1, len(t) - cfg.last_k)) for t in texts]
    if not forget or not utility:
        raise InterpError(f"{data_dir}: no forget or utility data to score for pruning")

    def batches(pairs):
        return [pack([s for s, _ in pairs[i:i + cfg.batch_size]],
                     [f for _, f in pairs[i:i + cfg.batch_size]], 0, device)
                for i in range(0, len(pairs), cfg.batch_size)]

    return PruneData(batches(forget), batches(utility), len(forget), len(utility))


def _cells(grid) -> list[tuple[float, float]]:
    cells = [(q, p) for q in grid for p in grid if q <= p]
    for q, p in cells:
        check_fractions(q, p)
    if not cells:
        raise InterpError("the pruning grid is empty; give fractions such as 0.01,0.05")
    return cells


def prune_attack(model: HookedTransformer, data_dir: Path, out: Path,
                 cfg: PruneAttackConfig | None = None, progress: bool = True) -> dict:
    """Set-difference pruning on `model` (a protected model); see the module docstring."""
    cfg = cfg or PruneAttackConfig()
    out = Path(out)
    if (out / "result.json").is_file():
        return read_json(out / "result.json")
    if cfg.level not in ("neuron", "weight"):
        raise InterpError(f"pruning level must be 'neuron' or 'weight', got {cfg.level!r}")
    cells = _cells(cfg.grid)
    t0 = time.perf_counter()
    forget_q = load_questions(Path(data_dir) / "forget_eval.jsonl")
    retain_q = load_questions(Path(data_dir) / "retain_eval.jsonl")
    f_small, r_small = forget_q[: cfg.eval_limit], retain_q[: cfg.eval_limit]

    def score(questions):
        return evaluate(model, questions, progress=False, batch_size=32).accuracy

    sd = snip_data(model, data_dir, cfg)
    forget_s = snip_scores(model, sd.forget, progress=progress, desc="SNIP forget")
    utility_s = snip_scores(model, sd.utility, progress=progress, desc="SNIP utility")
    fractions = sorted(set(cfg.grid))
    if cfg.level == "neuron":
        nf, nu = neuron_scores(model, forget_s), neuron_scores(model, utility_s)
        del forget_s, utility_s

        def masks_for(q, p):
            neurons = neuron_set_difference(nf, nu, q, p)
            return neuron_weight_masks(model, neurons), neurons.float().mean(-1)
    else:
        tf, tu = Thresholds.of(forget_s, fractions), Thresholds.of(utility_s, fractions)

        def masks_for(q, p):
            masks = {n: grid_mask(forget_s[n], utility_s[n], tf.values[n][q], tu.values[n][p])
                     for n in forget_s}
            per_layer = []
            for layer in range(model.cfg.n_layers):
                ms = [m for n, m in masks.items() if n.startswith(f"blocks.{layer}.")]
                per_layer.append(sum(float(m.sum()) for m in ms) / sum(m.numel() for m in ms))
            return masks, torch.tensor(per_layer)

    base = {"forget": score(f_small), "retain": score(r_small)}
    state_path = out / "grid.json"
    state = read_json(state_path) if state_path.is_file() else {}
    if state.get("config") != asdict(cfg):
        state = {"config": asdict(cfg), "cells": []}
    done = {(c["q"], c["p"]) for c in state["cells"]}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), initial=len(done), desc="pruning grid", leave=False)
    for q, p in cells:
        if (q, p) in done:
            continue
        masks, per_layer = masks_for(q, p)
        with pruned(model, masks):
            cell = PruneCell(q, p, score(f_small), score(r_small), _overall(model, masks, cfg,
                                                                               per_layer))
        state["cells"].append(asdict(cell))
        write_json(state_path, state)  # each finished cell is kept
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    grid = [PruneCell(**c) for c in state["cells"]]
    floor = base["retain"] - cfg.retain_drop
    eligible = [c for c in grid if c.retain >= floor] or grid
    best = max(eligible, key=lambda c: (c.forget, c.retain, -c.pruned_frac))
    masks, per_layer = masks_for(best.q, best.p)
    with pruned(model, masks):
        best_full = {"forget": score(forget_q), "retain": score(retain_q)}
    result = {
        "attack": "prune", "level": cfg.level, "config": asdict(cfg),
        "n_snip_forget": sd.n_forget, "n_snip_utility": sd.n_utility,
        "no_attack_sample": base, "retain_floor": floor,
        "no_attack": {"forget": score(forget_q), "retain": score(retain_q),
                      "n_forget": len(forget_q), "n_retain": len(retain_q)},
        "grid": [asdict(c) for c in grid],
        "best": {**asdict(best), **{f"{k}_full": v for k, v in best_full.items()}},
        "pruned_per_layer": per_layer.tolist(),
        "pruned_pct": 100 * best.pruned_frac,
    }
    if cfg.level == "neuron":
        from safetensors.torch import save_file

        neurons = neuron_set_difference(nf, nu, best.q, best.p)
        save_file({"neurons": neurons.to(torch.uint8).contiguous()},
                  str(out / "neurons.safetensors"))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["figures"] = _figures(result, out)
    write_json(out / "result.json", result)  # last: marks the attack finished
    return result


def _overall(model, masks, cfg: PruneAttackConfig, per_layer) -> float:
    if cfg.level == "neuron":
        return float(per_layer.mean())
    total = sum(p.numel() for n, p in model.named_parameters() if n in masks)
    return sum(float(m.sum()) for m in masks.values()) / total


def _figures(result: dict, out: Path) -> list[str]:
    unit = "neurons" if result["level"] == "neuron" else "weights"
    best = result["best"]
    fig = layer_lines({f"pruned {unit} (q={best['q']}, p={best['p']})":
                       result["pruned_per_layer"]}, chance=None, ytitle=f"fraction of {unit}",
                      title=f"Set-difference pruning: {unit} pruned per layer")
    files = save_figure(fig, out / "pruned_per_layer")
    qs = sorted({c["q"] for c in result["grid"]})
    ps = sorted({c["p"] for c in result["grid"]})
    z = [[next((c["forget"] for c in result["grid"] if c["q"] == q and c["p"] == p), None)
          for q in qs] for p in ps]
    fig = heatmap(z, [f"{100 * q:g}%" for q in qs], [f"{100 * p:g}%" for p in ps],
                  title="Forget accuracy after pruning (top-q forget minus top-p utility)",
                  xtitle="q (forget top fraction)", ytitle="p (utility top fraction)")
    files += save_figure(fig, out / "grid")
    return [str(f) for f in files]
