"""The pruning attack: SNIP attribution and set-difference pruning (`interp.attacks.snip`, whose
API is re-exported here) on the paper's data.

The attack (`run`): forget data = the training split's forget questions with their right answers
(loss on the answer only); utility data = retain questions with their right answers and unrelated
text (loss on its last k tokens). The grid is scored on the validation split and each finished
cell is written to `grid.json` at once, so an interrupted grid resumes where it stopped; the best
cell (retain accuracy within `retain_drop`) is reported on the test split.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from interp import timing
from interp.attacks import base
from interp.attacks.base import AttackSpec, Baseline, Row
from interp.attacks.sets import QuestionSets
from interp.attacks.snip import (  # noqa: F401 - the SNIP API, re-exported here
    ScoreFiles,
    Thresholds,
    check_fractions,
    grid_mask,
    neuron_scores,
    neuron_set_difference,
    neuron_weight_masks,
    pruned,
    set_difference,
    snip_memory_bytes,
    snip_scores,
    top_mask,
)
from interp.cost import StepProbe, Workload, capped
from interp.data.folder import as_data
from interp.errors import InterpError
from interp.model.hooks import layer_of
from interp.plots import heatmap, layer_lines
from interp.protections.common import encode_pairs, encode_texts
from interp.scoring import evaluate
from interp.store import read_json, write_json
from interp.training import TokenBatch, pack

# ---------------------------------------------------------------------------------- the attack
PAPER_GRID = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2)
SNIP_DATA = ("pairs", "corpus", "generations", "official")


def official_data(cfg, method: str):
    """The official recipe's SNIP data for a protection: the forget corpus against unrelated
    text for one trained on a corpus (RMU), the unlearned model's own generations against the
    retain questions otherwise (NPO, DPO, and a model of unknown protection)."""
    if cfg.snip_data != "official":
        return cfg
    from interp.registry import REGISTRIES

    known = method in REGISTRIES["protection"].names()
    on_corpus = known and REGISTRIES["protection"].get(method).SPEC.trains_on == "corpus"
    return replace(cfg, snip_data="corpus" if on_corpus else "generations")


@dataclass
class Config:
    """The pruning attack's settings: neuron or weight level, the (q, p) grid, the SNIP data
    (source, sizes, lengths), validation questions per cell, and how much retain accuracy a cell may
    lose."""

    level: str = "neuron"  # "neuron" (whole MLP neurons) or "weight" (every attn/MLP weight)
    grid: tuple[float, ...] = PAPER_GRID  # cells: every (q, p) from it with q <= p
    n_forget: int = 64  # prompt/response pairs scored for the forget SNIP
    n_utility: int = 64  # retain pairs, and as many unrelated texts, for the utility SNIP
    last_k: int = 32  # raw text: loss on its last k tokens only
    batch_size: int = 8
    eval_limit: int | None = 100  # validation questions per split scored for each cell
    retain_drop: float = 0.10  # a cell qualifies if retain >= no-attack retain - this
    max_len: int = 128
    # SNIP data: "pairs" (forget answers vs retain answers + unrelated text), "corpus" (forget
    # corpus texts vs unrelated texts, loss on the last `last_k` tokens), "generations" (the
    # model's own `gen_tokens` greedy tokens on forget prompts vs retain answers), "official"
    # (corpus for RMU, generations for the others: the official code's choice)
    snip_data: str = "pairs"
    gen_tokens: int = 50

    def __post_init__(self) -> None:
        _cells(self.grid)  # a bad grid fails here, before any model is loaded
        if self.snip_data not in SNIP_DATA:
            raise InterpError(f"unknown SNIP data {self.snip_data!r}; use one of "
                              f"{list(SNIP_DATA)}")


@dataclass
class PruneCell:
    """One (q, p) cell on the validation split: forget and retain accuracy and the share pruned."""

    q: float
    p: float
    forget: float
    retain: float
    pruned_frac: float  # of neurons (neuron level) or of weights (weight level)


@dataclass
class BestCell(PruneCell):
    """The chosen cell, with its scores on every test question (`forget_full`, `retain_full`)."""

    forget_full: float = 0.0  # on every test question (the cells: validation questions)
    retain_full: float = 0.0
    control_full: float | None = None  # the never-known control (test)
    forget_correct: str | None = None  # per question (`interp.results.bits`)
    control_correct: str | None = None


@dataclass
class Result(base.Result):
    """`pruned_per_layer`: (n_layers,) share of neurons (or weights) pruned in the best cell;
    `neurons` (in memory only; `neurons.safetensors` on disk): (n_layers, d_mlp) its mask."""

    config: Config
    level: str
    n_snip_forget: int
    n_snip_utility: int
    no_attack_sample: dict[str, float]
    retain_floor: float
    no_attack: Baseline
    grid: list[PruneCell]
    best: BestCell
    pruned_per_layer: list[float]
    pruned_pct: float
    n_val_forget: int = 0  # validation questions each cell was scored on
    n_val_retain: int = 0
    format: str = "cloze"
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    neurons: Tensor | None = base.not_saved()
    figure_stem: ClassVar[str] = "grid"

    def rows(self, model: str) -> list[Row]:
        """Forget and retain rows of the best cell (test split; the cell's validation scores beside
        them)."""
        val = base.Baseline(self.best.forget, self.best.retain, self.n_val_forget,
                            self.n_val_retain)
        b = self.best
        scores = base.Scores(b.forget_full, b.retain_full, control=b.control_full,
                             n_control=self.no_attack.n_control, forget_correct=b.forget_correct,
                             control_correct=b.control_correct)
        return base.score_rows(model, "prune", scores,
                               self.no_attack, self.format, "prune",
                               f"{self.pruned_pct:.2f}% {self.level}s", val)

    def plot(self):
        """Validation forget accuracy over the (q, p) grid."""
        qs = sorted({c.q for c in self.grid})
        ps = sorted({c.p for c in self.grid})
        z = [[next((c.forget for c in self.grid if c.q == q and c.p == p), None) for q in qs]
             for p in ps]
        return heatmap(z, [f"{100 * q:g}%" for q in qs], [f"{100 * p:g}%" for p in ps],
                       title="Forget accuracy after pruning (top-q forget minus top-p utility)",
                       xtitle="q (forget top fraction)", ytitle="p (utility top fraction)")

    def extra_figures(self) -> dict:
        """`pruned_per_layer`: the share pruned per layer in the best cell."""
        unit = "neurons" if self.level == "neuron" else "weights"
        return {"pruned_per_layer": layer_lines(
            {f"pruned {unit} (q={self.best.q}, p={self.best.p})": self.pruned_per_layer},
            chance=None, ytitle=f"fraction of {unit}",
            title=f"Set-difference pruning: {unit} pruned per layer")}


@dataclass
class PruneData:
    """The SNIP data: forget and utility token batches, and how many sequences each side holds."""

    forget: list[TokenBatch]
    utility: list[TokenBatch]
    n_forget: int
    n_utility: int


def snip_data(model: HookedTransformer, data, cfg: Config) -> PruneData:
    """The SNIP data for `model` from a data folder, as `cfg.snip_data` chooses (the forget side
    from training-split entities only)."""
    data = as_data(data)
    rows = data.preference()
    device = model.cfg.device
    train = data.train_entities("forget")  # never a validation or test entity
    forget, _ = encode_pairs(model, [(r["prompt"], r["rejected"], False) for r in rows
                                     if r["split"] == "forget"
                                     and r.get("entity", r.get("id")) in train],
                             max_len=cfg.max_len, what="SNIP forget")
    retain, _ = encode_pairs(model, [(r["prompt"], r["chosen"], False) for r in rows
                                     if r["split"] == "retain"],
                             max_len=cfg.max_len, what="SNIP retain")
    forget = [x for x in forget if x][: cfg.n_forget]
    retain = [x for x in retain if x][: cfg.n_utility]
    texts = encode_texts(model, data.corpus("unrelated")[: cfg.n_utility], max_len=cfg.max_len)
    texts = [(t, max(1, len(t) - cfg.last_k)) for t in texts if len(t) > 1]
    utility = retain + texts
    if cfg.snip_data == "official":
        raise InterpError("SNIP data 'official' depends on the protection: give 'corpus' (RMU) "
                          "or 'generations' (NPO, DPO)")
    if cfg.snip_data == "corpus":  # forget corpus (train entities only) against unrelated text
        kept = [r["text"] for r in data.rows("forget_corpus")
                if r.get("entity") is None or r["entity"] in train]
        corpus = encode_texts(model, kept, max_len=cfg.max_len)
        forget = [(t, max(1, len(t) - cfg.last_k)) for t in corpus if len(t) > 1][: cfg.n_forget]
        utility = texts
    elif cfg.snip_data == "generations":  # what the unlearned model says now, against retain
        prompts = [r["prompt"] for r in rows if r["split"] == "forget"
                   and r.get("entity", r.get("id")) in train][: cfg.n_forget]
        forget = own_generations(model, prompts, cfg)
        utility = retain
    if not forget or not utility:
        raise InterpError(f"{data.folder}: no forget or utility data to score for pruning")

    def batches(pairs):
        return [pack([s for s, _ in pairs[i:i + cfg.batch_size]],
                     [f for _, f in pairs[i:i + cfg.batch_size]], 0, device)
                for i in range(0, len(pairs), cfg.batch_size)]

    return PruneData(batches(forget), batches(utility), len(forget), len(utility))


def own_generations(model: HookedTransformer, prompts: list[str], cfg: Config
                    ) -> list[tuple[list[int], int]]:
    """Each prompt followed by the model's own greedy `gen_tokens` tokens, loss on those."""
    from interp.model.load import get_tokenizer
    from interp.scoring import generate_greedy

    tok = get_tokenizer(model)
    keep = max(1, cfg.max_len - cfg.gen_tokens)
    ids = [tok(p)["input_ids"][-keep:] for p in prompts]
    texts = generate_greedy(model, ids, max_new_tokens=cfg.gen_tokens)
    pairs, _ = encode_pairs(model, [(p, t.strip() or ".", False) for p, t in zip(prompts, texts)],
                            max_len=cfg.max_len, what="SNIP generations")
    return [x for x in pairs if x]


def _cells(grid) -> list[tuple[float, float]]:
    cells = [(q, p) for q in grid for p in grid if q <= p]
    for q, p in cells:
        check_fractions(q, p)
    if not cells:
        raise InterpError("the pruning grid is empty; give fractions such as 0.01,0.05")
    return cells


def memory_steps(cfg: Config, config: dict, prompt_tokens: int) -> list:
    """The memory plan's step: one SNIP batch, float32 sums of every block matrix."""
    return [Workload("snip", cfg.batch_size, cfg.max_len, "weights", snip=True,
                     note="float32 sums; the finished score set on the host")]


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Steps of `run` (`interp.cost`): SNIP samples, the grid's scores and the full ones."""
    fs, rs = capped(sizes.forget_val, cfg.eval_limit), capped(sizes.retain_val, cfg.eval_limit)
    snip = (capped(sizes.forget_train, cfg.n_forget) + capped(sizes.retain_train, cfg.n_utility)
            + capped(sizes.unrelated, cfg.n_utility))
    return {"snip": snip, "score": (len(_cells(cfg.grid)) + 1) * (fs + rs)
            + 2 * (sizes.forget_test + sizes.retain_test + sizes.control_test)}

def run(model: HookedTransformer, data, cfg: Config | None = None, *, original=None,
        out: Path | None = None, progress: bool = True) -> Result:
    """Set-difference pruning of `model` (a protected model); see the module docstring."""
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    if cfg.level not in ("neuron", "weight"):
        raise InterpError(f"pruning level must be 'neuron' or 'weight', got {cfg.level!r}")
    cells = _cells(cfg.grid)
    data = as_data(data)
    t0 = time.perf_counter()
    test = QuestionSets.load(data, "test")
    forget_q = test.forget
    # the cell is chosen on the validation split; the reported scores are on the test split
    f_small = data.questions("forget_val", limit=cfg.eval_limit)
    r_small = data.questions("retain_val", limit=cfg.eval_limit)

    def score(questions):
        return evaluate(model, questions, progress=False, batch_size=32).accuracy

    sd = snip_data(model, data, cfg)
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
        # the scores are on the host (snip_scores); each matrix visits the device to be sorted
        device = model.cfg.device
        tf = Thresholds.of(forget_s, fractions, device=device)
        tu = Thresholds.of(utility_s, fractions, device=device)

        def masks_for(q, p):
            masks = {n: grid_mask(forget_s[n], utility_s[n], tf.values[n][q], tu.values[n][p])
                     for n in forget_s}
            per_layer = []
            for layer in range(model.cfg.n_layers):
                ms = [m for n, m in masks.items() if layer_of(n) == layer]
                per_layer.append(sum(float(m.sum()) for m in ms) / sum(m.numel() for m in ms))
            return masks, torch.tensor(per_layer)

    sample = {"forget": score(f_small), "retain": score(r_small)}
    grid = _run_grid(model, cells, masks_for, cfg, out, score, f_small, r_small, progress)
    floor = sample["retain"] - cfg.retain_drop
    eligible = [c for c in grid if c.retain >= floor] or grid
    best = max(eligible, key=lambda c: (c.forget, c.retain, -c.pruned_frac))
    masks, per_layer = masks_for(best.q, best.p)
    def scorer(questions):
        return evaluate(model, questions, progress=False, batch_size=32)

    with pruned(model, masks):
        m = test.score(scorer)
        full = {"forget_full": m.forget, "retain_full": m.retain, "control_full": m.control,
                "forget_correct": m.forget_correct, "control_correct": m.control_correct}
    neurons = (neuron_set_difference(nf, nu, best.q, best.p) if cfg.level == "neuron" else None)
    result = Result(
        config=cfg, level=cfg.level, n_snip_forget=sd.n_forget, n_snip_utility=sd.n_utility,
        no_attack_sample=sample, retain_floor=floor,
        no_attack=test.score(scorer, Baseline),
        grid=grid, best=BestCell(**asdict(best), **full), pruned_per_layer=per_layer.tolist(),
        pruned_pct=100 * best.pruned_frac, n_val_forget=len(f_small),
        n_val_retain=len(r_small), format=forget_q[0].format,
        seconds=round(time.perf_counter() - t0, 1), neurons=neurons)
    if out is not None and neurons is not None:
        from safetensors.torch import save_file

        Path(out).mkdir(parents=True, exist_ok=True)
        save_file({"neurons": neurons.to(torch.uint8).contiguous()},
                  str(Path(out) / NEURONS_FILE))
    return base.save(result, out)


NEURONS_FILE = "neurons.safetensors"


def _run_grid(model, cells, masks_for, cfg: Config, out: Path | None, score, f_small, r_small,
              progress: bool) -> list[PruneCell]:
    """Score every (q, p) cell; with `out`, each finished cell is kept in `grid.json`."""
    state_path = Path(out) / "grid.json" if out is not None else None
    state = read_json(state_path) if state_path is not None and state_path.is_file() else {}
    config = base.to_jsonable(cfg)  # as JSON reads it back (tuples become lists)
    if state.get("config") != config:
        state = {"config": config, "cells": []}
    done = {(c["q"], c["p"]) for c in state["cells"]}
    bar = tqdm(total=len(cells), initial=len(done), desc="pruning grid", leave=False,
               disable=not progress)
    for q, p in cells:
        if (q, p) in done:
            continue
        masks, per_layer = masks_for(q, p)
        with pruned(model, masks):
            cell = PruneCell(q, p, score(f_small), score(r_small),
                             _overall(model, masks, cfg, per_layer))
        state["cells"].append(asdict(cell))
        if state_path is not None:
            write_json(state_path, state)  # each finished cell is kept
        bar.update(1)
    bar.close()
    return [PruneCell(**c) for c in state["cells"]]


def _overall(model, masks, cfg: Config, per_layer) -> float:
    if cfg.level == "neuron":
        return float(per_layer.mean())
    total = sum(p.numel() for n, p in model.named_parameters() if n in masks)
    return sum(float(m.sum()) for m in masks.values()) / total

def _snip_sample(pr, cfg: Config) -> float:
    """`interp plan`'s probe: seconds per attributed sample (one batch; the synthetic pairs
    stand for whichever texts the recipe picks)."""
    sd = snip_data(pr.model, pr.data, replace(cfg, n_forget=cfg.batch_size, snip_data="pairs"))
    batch = sd.forget[:1]
    return timing.timed_calls(lambda: (snip_scores(pr.model, batch, progress=False),
                                       int(batch[0].tokens.shape[0]))[1], pr.steps, pr.device)


def probes(cfg: Config) -> dict[str, StepProbe]:
    """How `interp plan` times the kinds `cost` counts (`interp.cost`)."""
    return {"snip": StepProbe("sample attributed", _snip_sample)}


SPEC = AttackSpec(
    "prune", order=50, summary="SNIP attribution and set-difference pruning",
    per_model=official_data,
    presets={
        "smoke": Config(grid=(0.01, 0.05, 0.1, 0.2), eval_limit=100, n_forget=32, n_utility=32),
        "laptop": Config(grid=(0.01, 0.025, 0.05), eval_limit=60),
        "paper": Config(level="weight", eval_limit=200, n_forget=512, n_utility=512,
                        batch_size=1, max_len=512,  # the official: one sample a pass
                        # RMU: forget corpus vs unrelated; NPO/DPO: own generations
                        snip_data="official", last_k=50),
    },
    budgets={"quick": Config(grid=(0.01, 0.05), eval_limit=50, n_forget=32, n_utility=32),
             "full": Config(grid=(0.01, 0.025, 0.05), eval_limit=60)},
    compared=lambda cfg: cfg.level == "neuron")  # neuron sets compare across protections
