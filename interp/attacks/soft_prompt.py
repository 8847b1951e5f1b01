"""Soft prompt: a universal prefix of n free input embeddings (after Schwinn et al. 2024, "Soft
Prompt Threats").

The prefix goes where a GCG prefix goes (before the question) on every training-split forget
question, and Adam descends the cross-entropy of the right answer over the four candidates, the
model frozen. An optional bound keeps each vector's norm within `max_norm` times the largest real
token embedding's. Every `eval_every` steps the prefix is scored on validation (the choice) and on
test forget and control (the budget curve); n and the step are chosen on validation and the test
numbers reported. Each chosen vector's distance to its nearest real token embedding is reported.

Placebo: the same optimization, n and steps with the answers' positions shuffled across training
questions (right by chance only): what a free input vector buys without the facts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
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
from interp.model.hooks import EMBED_HOOK
from interp.model.state import get_tokenizer
from interp.plots import budget_lines


@dataclass
class Config:
    """Soft-prompt settings: the prefix lengths tried, Adam steps and learning rate (a share of a
    real embedding's root-mean-square coordinate), questions per step, the norm bound (a multiple
    of the largest real token embedding's norm; None: unbounded), how often validation is scored,
    the shuffled-answer placebo, raw or chat prompts, questions per split (None: all), a seed."""

    n_tokens: tuple[int, ...] = (1, 5, 20)
    steps: int = 60
    lr: float = 0.1
    batch_size: int = 16
    max_norm: float | None = 1.0
    eval_every: int = 10
    placebo: bool = True
    chat: bool = False
    eval_limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.n_tokens or any(int(n) < 1 for n in self.n_tokens):
            raise InterpError(f"soft prompt n_tokens must be positive, got {list(self.n_tokens)}")
        if self.steps < 1 or self.eval_every < 1 or self.batch_size < 1:
            raise InterpError("soft prompt steps, eval_every and batch_size must be at least 1")
        if self.lr <= 0 or (self.max_norm is not None and self.max_norm <= 0):
            raise InterpError("soft prompt lr and max_norm must be positive")


@dataclass
class Curve:
    """One prefix length: per checkpoint step, validation forget accuracy and loss; for the chosen
    length, test forget and control accuracy too (empty for the others)."""

    steps: list[int]
    val: list[float]
    val_loss: list[float]
    test: list[float]
    control: list[float] = field(default_factory=list)


@dataclass
class Result(base.Result):
    """The chosen prefix length and step (`n_tokens` 0: no prefix beat none on validation, the
    scores are the model's own), their scores, the placebo's (at the best prefix), and every
    curve."""

    config: Config
    n_tokens: int
    step: int
    test: Measured
    val: Measured
    no_attack: Measured
    curves: dict[str, Curve]  # str(n) -> its curve
    nearest_distance: list[float]  # per chosen vector: to the nearest real token embedding
    nearest_tokens: list[str]
    relative_distance: list[float]  # the same, over the mean real embedding norm
    placebo: Measured | None = None
    n_val: int = 0
    format: str = "cloze"
    chat: bool = False
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    prefix: Float[Tensor, "n d"] | None = base.not_saved()  # the chosen vectors
    figure_stem: ClassVar[str] = "soft_prompt"

    @property
    def mode(self) -> str:
        """"chat" or "raw"."""
        return "chat" if self.chat else "raw"

    def rows(self, model: str) -> list[Row]:
        """The chosen prefix's rows, its own no-attack rows' reference is the protected model's,
        and the placebo's rows."""
        dist = max(self.relative_distance) if self.relative_distance else float("nan")
        note = (f"n={self.n_tokens}, step {self.step}, ≤{dist:.2f}×‖e‖ from a token"
                if self.n_tokens else "no prefix: none beat it on validation")
        out = base.score_rows(model, "soft_prompt", self.test, self.no_attack, self.format,
                              "soft prompt", note, self.val, mode=self.mode)
        if self.placebo is not None:
            out += base.score_rows(model, "soft_prompt-placebo", self.placebo, self.no_attack,
                                   self.format, "placebo: soft prompt", "shuffled answers",
                                   mode=self.mode)
        return out

    def plot(self):
        """Test forget (and control) accuracy against Adam steps, one line per prefix length."""
        series = {}
        ns = {}
        for n, c in self.curves.items():
            series[f"validation forget, n={n}"] = (c.steps, c.val)
            ns[f"validation forget, n={n}"] = self.n_val
            if c.test:
                series[f"test forget, n={n}"] = (c.steps, c.test)
                ns[f"test forget, n={n}"] = self.no_attack.n_forget
            if c.control:
                series[f"test control, n={n}"] = (c.steps, c.control)
                ns[f"test control, n={n}"] = self.no_attack.n_control
        return budget_lines(series, n=ns, xtitle="Adam steps",
                            baseline={"no attack (forget)": self.no_attack.forget},
                            title=f"Soft prompt: test accuracy against steps ({self.mode})")


def embedding_scale(model: HookedTransformer) -> tuple[float, float, float]:
    """(largest norm, mean norm, rms coordinate) of the real token embeddings."""
    w = model.embed.W_E.detach().float()[: len(get_tokenizer(model))]
    norms = w.norm(dim=-1)
    return float(norms.max()), float(norms.mean()), float(w.pow(2).mean().sqrt())


def prefix_hooks(prefix: Tensor):
    """Hook maker: each batch's slot positions take the prefix's vectors."""

    def make(rows: Rows) -> list:
        def put(x, hook):
            idx = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(rows.slot)
            vec = prefix.to(x.dtype)[None].expand(x.shape[0], -1, -1)
            return x.index_put((idx, rows.slot), vec)

        return [(EMBED_HOOK, put)]

    return make


def nearest_tokens(model: HookedTransformer, prefix: Tensor) -> tuple[list[float], list[str]]:
    """Each vector's Euclidean distance to its nearest real token embedding, and that token."""
    tok = get_tokenizer(model)
    w = model.embed.W_E.detach().float()[: len(tok)]
    dist = torch.cdist(prefix.detach().float().to(w.device), w)  # (n, vocab)
    d, i = dist.min(-1)
    return d.tolist(), [tok.decode([int(j)]) for j in i]


def optimize(model: HookedTransformer, train: Rows, n: int, cfg: Config, *,
             checkpoint=None, progress: bool = True) -> dict[int, Tensor]:
    """Fit an n-vector prefix on `train` (targets as given); the prefix at step 0 (random real
    token embeddings) and every `eval_every` steps, by step. `checkpoint(step, prefix)` is called
    at each."""
    largest, _, rms = embedding_scale(model)
    bound = cfg.max_norm * largest if cfg.max_norm is not None else None
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * n)
    start = torch.randint(0, len(get_tokenizer(model)), (n,), generator=gen)
    prefix = model.embed.W_E.detach().float()[start.to(model.embed.W_E.device)].clone()
    prefix.requires_grad_(True)
    opt = torch.optim.Adam([prefix], lr=cfg.lr * rms)
    batches = minibatches(len(train), cfg.batch_size, cfg.seed)
    saved = {0: prefix.detach().clone()}
    if checkpoint:
        checkpoint(0, saved[0])
    make = prefix_hooks(prefix)
    with frozen(model):
        for step in tqdm(range(1, cfg.steps + 1), desc=f"soft prompt n={n}", leave=False,
                         disable=not progress):
            t_step = time.perf_counter()
            rows = train.take(next(batches))
            loss = candidate_loss(model, rows, make(rows))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if bound is not None:
                with torch.no_grad():
                    norms = prefix.norm(dim=-1, keepdim=True)
                    prefix.mul_(torch.clamp(bound / norms, max=1.0))
            timing.record(time.perf_counter() - t_step)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                saved[step] = prefix.detach().clone()
                if checkpoint:
                    checkpoint(step, saved[step])
    return saved


def soft_prompt(model: HookedTransformer, data, cfg: Config | None = None, *,
                progress: bool = True, **settings) -> Result:
    """`run` without a folder, for a notebook: `settings` override the config's fields (e.g.
    `steps=20`)."""
    from dataclasses import replace

    return run(model, data, replace(cfg or Config(), **settings), progress=progress)


def run(model: HookedTransformer, data, cfg: Config | None = None, *, original=None,
        out: Path | None = None, progress: bool = True) -> Result:
    """Fit a universal soft prompt per length on training forget questions; choose the length and
    step on validation; report test forget, retain and control, and the placebo's."""
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    t0 = time.perf_counter()
    data = as_data(data)
    test, val = test_and_val(data, cfg.eval_limit)
    train_q = data.questions("forget_train")
    mean_norm = embedding_scale(model)[1]
    curves, prefixes = {}, {}
    for n in cfg.n_tokens:
        train = encode_rows(model, train_q, n, chat=cfg.chat)
        val_rows = encode_rows(model, val.forget, n, chat=cfg.chat)
        curve = Curve([], [], [], [], [])

        def checkpoint(step, prefix, val_rows=val_rows, curve=curve):
            got = score_rows(model, val_rows, prefix_hooks(prefix))
            curve.steps.append(step)
            curve.val.append(got.accuracy)
            curve.val_loss.append(float(-got.probs[torch.arange(len(got.answers)),
                                                   got.answers].log().mean()))

        saved = optimize(model, train, n, cfg, checkpoint=checkpoint, progress=progress)
        curves[str(n)], prefixes[n] = curve, saved
    # the choice, on validation: accuracy, then loss, then the shorter prefix and fewer steps
    n, i = max(((n, i) for n in cfg.n_tokens for i in range(len(curves[str(n)].steps))),
               key=lambda t: (curves[str(t[0])].val[t[1]], -curves[str(t[0])].val_loss[t[1]],
                              -t[0], -curves[str(t[0])].steps[t[1]]))
    # the chosen length's budget curve on test: forget and control at every checkpoint
    curve = curves[str(n)]
    test_rows = {"test": encode_rows(model, test.forget, n, chat=cfg.chat)}
    if test.control:
        test_rows["control"] = encode_rows(model, test.control, n, chat=cfg.chat)
    for s in curve.steps:
        for k, r in test_rows.items():
            getattr(curve, k).append(score_rows(model, r, prefix_hooks(prefixes[n][s])).accuracy)
    step = curves[str(n)].steps[i]
    chosen = prefixes[n][step]
    plain = scorer_of(model, chat=cfg.chat)
    # no prefix is an option too: a prefix is used only if it beats none on validation
    used = curves[str(n)].val[i] > plain(val.forget).accuracy
    score = scorer(model, prefix_hooks(chosen), n, chat=cfg.chat) if used else plain
    placebo = None
    if cfg.placebo:
        shuffled = encode_rows(model, train_q, n, chat=cfg.chat,
                               targets=shuffled_targets(train_q, cfg.seed))
        p_cfg = replace(cfg, steps=max(step, 1))
        fake = optimize(model, shuffled, n, p_cfg, progress=progress)
        placebo = test.score(scorer(model, prefix_hooks(fake[step] if step else fake[0]), n,
                                    chat=cfg.chat), retain=False)
    dist, toks = nearest_tokens(model, chosen)
    result = Result(config=cfg, n_tokens=n if used else 0, step=step, test=test.score(score),
                    val=val.score(score), no_attack=test.score(plain), curves=curves,
                    nearest_distance=dist, nearest_tokens=toks,
                    relative_distance=[d / mean_norm for d in dist], placebo=placebo,
                    n_val=len(val.forget), format=test.forget[0].format, chat=cfg.chat,
                    seconds=round(time.perf_counter() - t0, 1), prefix=chosen)
    return base.save(result, out)


def memory_steps(cfg: Config, config: dict, prompt_tokens: int) -> list:
    """The memory plan's step: one batch with gradients of the input embeddings."""
    return [Workload("soft_prompt", cfg.batch_size, prompt_tokens, "inputs")]


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Steps and scores of `run` (`interp.cost`): per length the steps, checkpoints on validation
    forget and test forget and control; the placebo's steps; the final scores."""
    f, r = capped(sizes.forget_test, cfg.eval_limit), capped(sizes.retain_test, cfg.eval_limit)
    c, v = capped(sizes.control_test, cfg.eval_limit), capped(sizes.forget_val, cfg.eval_limit)
    checks = cfg.steps // cfg.eval_every + 1 + (cfg.steps % cfg.eval_every != 0)
    steps = len(cfg.n_tokens) * cfg.steps + (cfg.steps if cfg.placebo else 0)
    vr, vc = capped(sizes.retain_val, cfg.eval_limit), capped(sizes.control_val, cfg.eval_limit)
    return {"soft_prompt": steps,
            "score": len(cfg.n_tokens) * checks * v + checks * (f + c) + 2 * (f + r + c)
            + 2 * v + vr + vc + (f + c if cfg.placebo else 0)}


def _step(pr, cfg: Config) -> float:
    """`interp plan`'s probe: seconds per Adam step on the prefix."""
    questions = pr.data.questions("forget_train")[: cfg.batch_size]
    train = encode_rows(pr.model, questions, max(cfg.n_tokens), chat=cfg.chat)
    probe_cfg = replace(cfg, steps=1, eval_every=1, n_tokens=(max(cfg.n_tokens),))
    return timing.timed_calls(
        lambda: (optimize(pr.model, train, max(cfg.n_tokens), probe_cfg, progress=False), 1)[1],
        pr.steps, pr.device)


def probes(cfg: Config) -> dict[str, StepProbe]:
    """How `interp plan` times the kinds `cost` counts (`interp.cost`)."""
    return {"soft_prompt": StepProbe("Adam step on the prefix", _step,
                                     knob="a smaller batch_size")}


SPEC = AttackSpec(
    "soft_prompt", order=54,
    summary="soft prompt: a universal prefix of free input embeddings, fitted by Adam",
    presets={"smoke": Config(n_tokens=(1, 5), steps=20, eval_every=5),
             "laptop": Config(n_tokens=(1, 5), steps=24, eval_every=8, batch_size=8),
             "paper": Config()},
    budgets={"quick": Config(n_tokens=(5,), steps=30, eval_every=10, eval_limit=100),
             "full": Config()})

