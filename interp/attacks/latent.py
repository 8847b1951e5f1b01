"""Latent perturbation: one universal vector δ added to the residual stream at one layer (after
the targeted latent adversarial attacks of Sheshadri et al. 2024).

δ is added after block ℓ (`resid_post`) at every real position but each prompt's first, and is
bounded: ‖δ‖ ≤ ε × r_ℓ, r_ℓ the mean residual norm at that layer over the training prompts'
positions (the first excluded: its norm is an outlier). It is fitted by projected gradient descent
on the right answer's cross-entropy over the four candidates, on training-split forget questions,
from δ = 0: each step moves `step_size` × ε r_ℓ along the normalized gradient, then projects onto
the ball. The layer and ε are chosen on validation from a capped grid (at most 5 layers × 4
values); the test accuracy against ε at the chosen layer is drawn with the control beside it (a
large ε can write any answer).

Placebo: the same fit at the chosen cell with the answers' positions shuffled across training
questions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from interp import timing
from interp.attacks import base
from interp.attacks.base import AttackSpec, Measured, Row
from interp.attacks.continuous import (
    Rows,
    candidate_loss,
    encode_rows,
    frozen,
    minibatches,
    score_rows,
    scorer,
    shuffled_targets,
)
from interp.attacks.sets import scorer_of, test_and_val
from interp.cost import StepProbe, Workload, capped
from interp.data.folder import as_data
from interp.errors import InterpError
from interp.model.hooks import hook_name
from interp.plots import budget_lines

MAX_LAYERS, MAX_EPS = 5, 4


@dataclass
class Config:
    """Latent-attack settings: the layers tried (None: `n_layers` spread over the middle half of
    the model), the bounds ε (multiples of the layer's mean residual norm), PGD steps and step
    size (a share of the bound), questions per step, the shuffled-answer placebo, raw or chat
    prompts, questions per split (None: all), a seed."""

    layers: tuple[int, ...] | None = None
    n_layers: int = 3
    eps: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    steps: int = 30
    step_size: float = 0.25
    batch_size: int = 16
    placebo: bool = True
    chat: bool = False
    eval_limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        count = len(self.layers) if self.layers is not None else self.n_layers
        if not 1 <= count <= MAX_LAYERS or not 1 <= len(self.eps) <= MAX_EPS:
            raise InterpError(f"the latent grid is capped at {MAX_LAYERS} layers x {MAX_EPS} "
                              f"values of eps (at least one of each), got {count} x "
                              f"{len(self.eps)}")
        if any(e <= 0 for e in self.eps) or self.steps < 1 or self.step_size <= 0:
            raise InterpError("latent eps, steps and step_size must be positive")


def grid_layers(cfg: Config, n_layers: int) -> list[int]:
    """The layers tried: the config's, else `cfg.n_layers` evenly over the middle half."""
    if cfg.layers is not None:
        bad = [x for x in cfg.layers if not 0 <= x < n_layers]
        if bad:
            raise InterpError(f"latent layers {bad} out of range 0..{n_layers - 1}")
        return sorted(set(cfg.layers))
    lo, hi = n_layers / 4, 3 * n_layers / 4
    k = cfg.n_layers
    return sorted({round(lo + (hi - lo) * i / max(k - 1, 1)) for i in range(k)})


def after_first(mask: Tensor) -> Tensor:
    """(b, p) 1.0 at every real position but each row's first (left padding)."""
    return ((mask.cumsum(-1) > 1) & mask.bool()).float()


def delta_hooks(layer: int, delta: Tensor):
    """Hook maker: δ added after block `layer` at every real position but the first."""

    def make(rows: Rows) -> list:
        keep = after_first(rows.mask)[..., None]

        def add(x, hook):
            return x + keep.to(x.dtype) * delta.to(x.dtype)

        return [(hook_name(layer), add)]

    return make


@torch.no_grad()
def mean_norm(model: HookedTransformer, rows: Rows, layer: int, batch_size: int = 32) -> float:
    """The mean residual norm after block `layer` over the rows' real positions, each row's first
    excluded."""
    total, count = 0.0, 0.0
    store: dict[str, Tensor] = {}

    def keep(x, hook):
        store["x"] = x.detach().float()

    for start in range(0, len(rows), batch_size):
        part = rows.take(range(start, min(start + batch_size, len(rows))))
        with model.hooks(fwd_hooks=[(hook_name(layer), keep)]):
            model(part.tokens, attention_mask=part.mask, stop_at_layer=layer + 1)
        w = after_first(part.mask)
        total += float((store["x"].norm(dim=-1) * w).sum())
        count += float(w.sum())
    return total / count


def project(delta: Tensor, radius: float) -> Tensor:
    """`delta` scaled onto the ball of `radius` if outside it (in place), and returned."""
    norm = float(delta.norm())
    if norm > radius:
        delta.mul_(radius / norm)
    return delta


def pgd(model: HookedTransformer, train: Rows, layer: int, radius: float, cfg: Config, *,
        progress: bool = False) -> Float[Tensor, "d"]:  # noqa: F821
    """δ fitted by projected (normalized) gradient descent inside the ball of `radius`."""
    delta = torch.zeros(model.cfg.d_model, device=model.cfg.device, requires_grad=True)
    batches = minibatches(len(train), cfg.batch_size, cfg.seed)
    make = delta_hooks(layer, delta)
    with frozen(model):
        for _ in tqdm(range(cfg.steps), desc=f"latent L{layer}", leave=False,
                      disable=not progress):
            t_step = time.perf_counter()
            rows = train.take(next(batches))
            (grad,) = torch.autograd.grad(candidate_loss(model, rows, make(rows)), delta)
            with torch.no_grad():
                g = grad / grad.norm().clamp_min(1e-12)
                delta.sub_(cfg.step_size * radius * g)
                project(delta, radius)
            timing.record(time.perf_counter() - t_step)
    return delta.detach().clone()


@dataclass
class Cell:
    """One (layer, ε) of the grid: validation forget accuracy, test forget and control accuracy,
    and ‖δ‖ as a share of the layer's mean residual norm."""

    layer: int
    eps: float
    val: float
    test: float
    control: float | None
    norm_share: float


@dataclass
class Result(base.Result):
    """The chosen (layer, ε) (ε 0: no δ beat none on validation, the scores are the model's own),
    their scores, the placebo's (at the best cell), and the whole grid."""

    config: Config
    layer: int
    eps: float
    test: Measured
    val: Measured
    no_attack: Measured
    grid: list[Cell]
    residual_norms: dict[str, float]  # str(layer) -> mean residual norm (first position out)
    placebo: Measured | None = None
    n_val: int = 0
    format: str = "cloze"
    chat: bool = False
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    delta: Float[Tensor, "d"] | None = base.not_saved()  # noqa: F821
    figure_stem: ClassVar[str] = "latent"

    @property
    def mode(self) -> str:
        """"chat" or "raw"."""
        return "chat" if self.chat else "raw"

    def rows(self, model: str) -> list[Row]:
        """The chosen cell's rows and the placebo's."""
        note = (f"L{self.layer}, ε={self.eps:g}" if self.eps
                else "no δ: none beat it on validation")
        out = base.score_rows(model, "latent", self.test, self.no_attack, self.format,
                              "latent (best layer, ε)", note, self.val, mode=self.mode)
        if self.placebo is not None:
            out += base.score_rows(model, "latent-placebo", self.placebo, self.no_attack,
                                   self.format, "placebo: latent", "shuffled answers",
                                   mode=self.mode)
        return out

    def plot(self):
        """Test forget and control accuracy against ε at the chosen layer (ε = 0: no attack)."""
        layer = self.layer
        cells = sorted((c for c in self.grid if c.layer == layer), key=lambda c: c.eps)
        xs = [0.0] + [c.eps for c in cells]
        series = {"forget": (xs, [self.no_attack.forget] + [c.test for c in cells])}
        ns = {"forget": self.no_attack.n_forget}
        if self.no_attack.control is not None:
            series["control"] = (xs, [self.no_attack.control] + [c.control for c in cells])
            ns["control"] = self.no_attack.n_control
        for layer in sorted({c.layer for c in self.grid}):
            mine = sorted((c for c in self.grid if c.layer == layer), key=lambda c: c.eps)
            series[f"validation forget, L{layer}"] = ([c.eps for c in mine],
                                                      [c.val for c in mine])
            ns[f"validation forget, L{layer}"] = self.n_val
        return budget_lines(series, n=ns, xtitle="ε (share of the mean residual norm)",
                            title=f"Latent perturbation at layer {self.layer}: accuracy against "
                                  f"its bound ({self.mode})")


def latent(model: HookedTransformer, data, cfg: Config | None = None, *,
           progress: bool = True, **settings) -> Result:
    """`run` without a folder, for a notebook: `settings` override the config's fields (e.g.
    `steps=20`)."""
    from dataclasses import replace

    return run(model, data, replace(cfg or Config(), **settings), progress=progress)


def run(model: HookedTransformer, data, cfg: Config | None = None, *, original=None,
        out: Path | None = None, progress: bool = True) -> Result:
    """Fit δ per (layer, ε) on training forget questions; choose the cell on validation; report
    test forget, retain and control, the placebo's, and every cell's test forget and control."""
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    t0 = time.perf_counter()
    data = as_data(data)
    test, val = test_and_val(data, cfg.eval_limit)
    train_q = data.questions("forget_train")
    train = encode_rows(model, train_q, chat=cfg.chat)
    rows = {"val": encode_rows(model, val.forget, chat=cfg.chat),
            "test": encode_rows(model, test.forget, chat=cfg.chat)}
    if test.control:
        rows["control"] = encode_rows(model, test.control, chat=cfg.chat)
    layers = grid_layers(cfg, model.cfg.n_layers)
    norms = {str(layer): mean_norm(model, train, layer) for layer in layers}
    grid, deltas = [], {}
    cells = [(layer, eps) for layer in layers for eps in cfg.eps]
    bar = tqdm(cells, desc="latent grid", disable=not progress, leave=False)
    for layer, eps in bar:
        radius = eps * norms[str(layer)]
        delta = pgd(model, train, layer, radius, cfg)
        got = {k: score_rows(model, r, delta_hooks(layer, delta)).accuracy
               for k, r in rows.items()}
        grid.append(Cell(layer, eps, got["val"], got["test"], got.get("control"),
                         float(delta.norm()) / norms[str(layer)]))
        deltas[(layer, eps)] = delta
    # the choice, on validation: accuracy, then the smaller ε, then the earlier layer
    best = max(grid, key=lambda c: (c.val, -c.eps, -c.layer))
    chosen = deltas[(best.layer, best.eps)]
    plain = scorer_of(model, chat=cfg.chat)
    # no perturbation is an option too: δ is used only if it beats none on validation
    used = best.val > plain(val.forget).accuracy
    score = scorer(model, delta_hooks(best.layer, chosen), chat=cfg.chat) if used else plain
    placebo = None
    if cfg.placebo:
        shuffled = encode_rows(model, train_q, chat=cfg.chat,
                               targets=shuffled_targets(train_q, cfg.seed))
        fake = pgd(model, shuffled, best.layer, best.eps * norms[str(best.layer)], cfg)
        placebo = test.score(scorer(model, delta_hooks(best.layer, fake), chat=cfg.chat),
                             retain=False)
    result = Result(config=cfg, layer=best.layer, eps=best.eps if used else 0.0,
                    test=test.score(score), val=val.score(score), no_attack=test.score(plain),
                    grid=grid, residual_norms=norms, placebo=placebo, n_val=len(val.forget),
                    format=test.forget[0].format, chat=cfg.chat,
                    seconds=round(time.perf_counter() - t0, 1), delta=chosen)
    return base.save(result, out)


def memory_steps(cfg: Config, config: dict, prompt_tokens: int) -> list:
    """The memory plan's step: one batch with gradients of the residual stream."""
    return [Workload("latent", cfg.batch_size, prompt_tokens, "inputs")]


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Steps and scores of `run` (`interp.cost`): per cell its PGD steps and validation forget,
    test forget and control; the placebo; the final scores."""
    f, r = capped(sizes.forget_test, cfg.eval_limit), capped(sizes.retain_test, cfg.eval_limit)
    c, v = capped(sizes.control_test, cfg.eval_limit), capped(sizes.forget_val, cfg.eval_limit)
    vr, vc = capped(sizes.retain_val, cfg.eval_limit), capped(sizes.control_val, cfg.eval_limit)
    n_layers = len(cfg.layers) if cfg.layers is not None else cfg.n_layers
    cells = n_layers * len(cfg.eps)
    return {"latent": (cells + cfg.placebo) * cfg.steps,
            "score": cells * (v + f + c) + 2 * (f + r + c) + 2 * v + vr + vc
            + (f + c if cfg.placebo else 0)}


def _step(pr, cfg: Config) -> float:
    """`interp plan`'s probe: seconds per PGD step (at the middle layer)."""
    questions = pr.data.questions("forget_train")[: cfg.batch_size]
    train = encode_rows(pr.model, questions, chat=cfg.chat)
    layer = pr.model.cfg.n_layers // 2
    from dataclasses import replace

    one = replace(cfg, steps=1)
    return timing.timed_calls(lambda: (pgd(pr.model, train, layer, 1.0, one), 1)[1], pr.steps,
                              pr.device)


def probes(cfg: Config) -> dict[str, StepProbe]:
    """How `interp plan` times the kinds `cost` counts (`interp.cost`)."""
    return {"latent": StepProbe("PGD step on the residual", _step, knob="a smaller batch_size")}


SPEC = AttackSpec(
    "latent", order=56,
    summary="latent perturbation: a bounded universal vector added to the residual stream",
    presets={"smoke": Config(layers=(1, 2), eps=(0.5, 2.0), steps=10),
             "laptop": Config(n_layers=2, eps=(0.5, 2.0), steps=12, batch_size=8),
             "paper": Config()},
    budgets={"quick": Config(n_layers=2, eps=(0.5, 2.0), steps=12, eval_limit=100),
             "full": Config()})
