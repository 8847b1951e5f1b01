"""GCG universal adversarial prefixes (Zou et al. 2023; the paper's enhanced objective after FLRT),
and the attack that optimizes one on a few forget questions and scores it on held-out ones.

One prefix of `n_tokens` tokens is shared by a set of training questions and placed where the
scorer puts `prefix=`: first in the user text, followed by a space. Each step:
1. token gradients: the prefix as one-hot rows times the embedding matrix (swapped in through a
   `hook_embed` hook), loss backpropagated to the one-hot matrix;
2. candidates: `search_width` copies of the current best prefix, each with `n_replace` positions
   set to one of that position's `topk` most promising tokens (most negative gradient); tokens
   that are special, non-ASCII (unless allowed) or do not survive decode -> re-encode are never
   proposed, and candidate prefixes that do not round-trip are dropped;
3. every candidate is scored exactly on all training questions, in batches; the best few prefixes
   are kept in a buffer and the next step starts from the best of them.

Objective per question (mean over questions): cross-entropy of the right answer's token at the
answer position ("plain"), plus for "enhanced" `resid_weight` x the squared distance of the
residual stream at `resid_layers` (the question's own tokens) to the original model's on the same
question without a prefix, relative to its squared norm, plus an optional `fluency_weight` x the
prefix's own mean next-token NLL. A seed makes runs repeat exactly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from interp import timing
from interp.attacks import base
from interp.attacks.base import AttackSpec, Row
from interp.attacks.gcg_objective import Objective  # noqa: F401  (re-exported)
from interp.attacks.gcg_tokens import (  # noqa: F401  (re-exported)
    MARK,
    Slots,
    allowed_tokens,
    question_slots,
    round_trips,
    sample_candidates,
)
from interp.cost import StepProbe, Workload, capped
from interp.data.folder import as_data
from interp.data.questions import Question
from interp.errors import InterpError
from interp.model.load import get_tokenizer
from interp.plots import budget_lines
from interp.results import bits
from interp.scoring import evaluate, letter_rule


@dataclass
class GCGConfig:
    """GCG settings: the prefix's length and start, steps, the candidate search (width, top-k,
    positions replaced, buffer, batch), the objective ("plain" or "enhanced", with residual and
    fluency terms), and for the attack, training and held-out question counts."""

    n_tokens: int = 20
    init: str | None = None  # initial prefix text; default "x x x ..."
    steps: int = 250
    search_width: int = 512
    topk: int = 256
    n_replace: int = 1
    buffer_size: int = 4
    candidate_batch: int = 256  # sequences per forward when scoring candidates
    # the text before the prefix (chat template, system prompt, BOS) is the same for every
    # candidate: run it once and let candidates read its keys and values (TransformerLens' cache)
    reuse_before: bool = True
    objective: str = "plain"  # "plain" or "enhanced"
    resid_layers: tuple[int, ...] = ()
    resid_weight: float = 1.0
    fluency_weight: float = 0.0
    chat: bool = False
    fmt: str | None = None  # question format override ("letter" / "cloze")
    allow_non_ascii: bool = False
    eval_every: int = 0  # held-out accuracy every k steps (0: only at the end)
    seed: int = 0
    progress: bool = True
    n_train: int = 8  # the attack: forget questions the prefix is optimized on
    heldout_limit: int | None = 100  # the attack: validation / test questions per split scored


@dataclass
class GCGResult:
    """One optimization: the best prefix (text and token ids), the best loss after each step,
    validation accuracy every `eval_every` steps, candidates scored, seconds and the config."""

    prefix: str
    prefix_ids: list[int]
    losses: list[float]  # best loss after each step
    # validation accuracy every `eval_every` steps: {"step", "accuracy", "prefix_ids", ...}
    val: list[dict] = field(default_factory=list)
    candidates_scored: int = 0
    seconds: float = 0.0
    config: dict = field(default_factory=dict)

    @property
    def seconds_per_step(self) -> float:
        """Wall-clock seconds per optimization step."""
        return self.seconds / max(1, len(self.losses))

    @property
    def candidates_per_second(self) -> float:
        """Candidate prefixes scored per second."""
        return self.candidates_scored / max(1e-9, self.seconds)


def initial_prefix(tokenizer, cfg: GCGConfig, allowed: Tensor | None = None) -> list[int]:
    """The starting prefix's token ids: `cfg.init` tokenized, or `n_tokens` copies of "x" (or of the
    first allowed token that repeats cleanly); an `InterpError` if it does not round-trip as allowed
    tokens."""
    text = cfg.init if cfg.init is not None else " ".join(["x"] * cfg.n_tokens)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InterpError(f"the initial prefix {text!r} has no tokens")
    ids = (ids * cfg.n_tokens)[: cfg.n_tokens] if cfg.init is None else ids

    def ok(ids: list[int]) -> bool:
        return round_trips(tokenizer, ids) and (allowed is None or all(bool(allowed[i])
                                                                       for i in ids))

    if cfg.init is None and not ok(ids) and allowed is not None:
        # "x" is not a token of this vocabulary: the first allowed token that repeats cleanly
        for token in allowed.nonzero()[:, 0].tolist():
            if ok([token] * cfg.n_tokens):
                return [token] * cfg.n_tokens
    if not ok(ids):
        raise InterpError(f"the initial prefix {text!r} does not tokenize back to itself as "
                          "allowed tokens (no special or non-ASCII tokens); choose another --init")
    return ids


def run_gcg(model: HookedTransformer, train: Sequence[Question], val: Sequence[Question],
            cfg: GCGConfig, original: HookedTransformer | None = None,
            test: Sequence[Question] = ()) -> GCGResult:
    """Optimize one prefix on `train`; held-out accuracy with the scorer's `prefix=` every
    `eval_every` steps and at the end (and on `test` too, for a budget curve).

    A step reads the device twice: the candidates' ids once (`.tolist()`, for the tokenizer's
    round trip) and the step's best loss once (the loss curve, the progress bar, and the step's
    time, which on a GPU is the device's because of that read). Everything else stays on the
    model's device: the allowed-token mask (sent once per run), the candidates, their losses,
    the argmin and the buffer of the best prefixes (losses and ids as device tensors, kept sorted
    by a stable sort, so ties keep the earliest prefix as before)."""
    if not train:
        raise InterpError("GCG needs at least one training question")
    if cfg.search_width < 1 or cfg.topk < 1 or cfg.n_tokens < 1 or cfg.steps < 0:
        raise InterpError("GCG needs search_width, topk, n_tokens >= 1 and steps >= 0")
    tok = get_tokenizer(model)
    device = model.cfg.device
    gen = torch.Generator().manual_seed(cfg.seed)
    rule = letter_rule(model)
    slots = [question_slots(tok, q, chat=cfg.chat, fmt=cfg.fmt, letter_ids=rule) for q in train]
    objective = Objective(model, slots, cfg, original)
    allowed = allowed_tokens(tok, model.cfg.d_vocab, cfg.allow_non_ascii)
    k = min(cfg.topk, int(allowed.sum()))  # on the host, once
    current = torch.tensor(initial_prefix(tok, cfg, allowed), dtype=torch.long)
    allowed = allowed.to(device)  # once per run
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    # the buffer, best first: losses (b,) and prefixes (b, n) on the device
    buf_ids = current.to(device)[None]
    buf_loss = objective.losses(buf_ids)
    result = GCGResult(prefix=tok.decode(current.tolist()), prefix_ids=current.tolist(),
                       losses=[], config=asdict(cfg))

    eval_seconds = 0.0

    def val_acc(ids: Tensor, step: int) -> None:
        nonlocal eval_seconds
        if val:
            t = time.perf_counter()
            ids = ids.tolist()
            prefix = tok.decode(ids)
            acc = evaluate(model, val, prefix=prefix, chat=cfg.chat, fmt=cfg.fmt,
                           progress=False, batch_size=32).accuracy
            entry = {"step": step, "candidates": result.candidates_scored, "accuracy": acc,
                     "prefix_ids": ids}
            if test:
                entry["test_accuracy"] = evaluate(model, test, prefix=prefix, chat=cfg.chat,
                                                  fmt=cfg.fmt, progress=False,
                                                  batch_size=32).accuracy
            result.val.append(entry)
            eval_seconds += time.perf_counter() - t

    try:
        bar = tqdm(range(cfg.steps), desc="GCG", disable=not cfg.progress, leave=False)
        for step in bar:
            t_step = time.perf_counter()
            grad = objective.token_gradient(buf_ids[0])
            cands = sample_candidates(buf_ids[0], grad, allowed, cfg, gen, k=k)
            # the one read of the candidates: the tokenizer's round trip needs host ids
            keep = [i for i, c in enumerate(cands.tolist()) if round_trips(tok, c)]
            if keep:
                if len(keep) < cands.shape[0]:
                    index = torch.tensor(keep, dtype=torch.long).to(device, non_blocking=True)
                    cands = cands.index_select(0, index)
                losses = objective.losses(cands)
                result.candidates_scored += cands.shape[0]
                i = losses.argmin(0, keepdim=True)  # (1,): the first of equal minima
                all_loss = torch.cat([buf_loss, losses.index_select(0, i)])
                all_ids = torch.cat([buf_ids, cands.index_select(0, i)])
                order = torch.sort(all_loss, stable=True).indices[: cfg.buffer_size]
                buf_loss, buf_ids = all_loss[order], all_ids[order]
            result.losses.append(buf_loss[0].item())  # the step's one read of a loss
            timing.record(time.perf_counter() - t_step)
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                val_acc(buf_ids[0], step + 1)
        bar.close()
        result.seconds = time.perf_counter() - t0 - eval_seconds  # search time only
        best = buf_ids[0]
        result.prefix_ids = best.tolist()
        result.prefix = tok.decode(result.prefix_ids)
        if not result.val or result.val[-1]["step"] != cfg.steps:
            val_acc(best, cfg.steps)
    finally:
        model.train(was_training)
    return result


# ---------------------------------------------------------------------------------- the attack
Config = GCGConfig


@dataclass
class ModeScores:
    """Forget and retain accuracy in one prompt mode, with and without the prefix."""

    forget_no_prefix: float
    forget: float
    retain_no_prefix: float
    retain: float
    # the never-known control with and without the prefix, the placebo (a random prefix of the
    # same length) on forget and control, and each one's per-question correctness
    control_no_prefix: float | None = None
    control: float | None = None
    placebo_forget: float | None = None
    placebo_control: float | None = None
    correct: dict[str, str] = field(default_factory=dict)


@dataclass
class Result(base.Result):
    """One prefix optimized on `n_train` training forget questions, the step chosen on the
    validation split (`val_per_step`, `chosen_step`); `scores` per prompt mode (raw, chat) on
    test forget questions (other entities than both) and retain questions."""

    renamed: ClassVar[dict[str, str]] = {"n_heldout": "n_test",  # result.json before 0.1.0
                                         "heldout_per_step": "val_per_step"}
    config: Config
    prefix: str
    prefix_ids: list[int]
    n_train: int
    n_test: int  # test forget questions scored
    n_retain: int
    losses: list[float]
    val_per_step: list[dict]  # validation accuracy of the best prefix so far, per eval step
    optimized_in: str
    scores: dict[str, ModeScores]
    seconds_per_step: float
    candidates_per_second: float
    candidates_scored: int
    chosen_step: int = 0  # the step whose prefix scored best on validation
    val_forget: float | None = None  # validation accuracy of that prefix (optimized_in mode)
    val_retain: float | None = None
    n_val: int = 0
    n_val_retain: int = 0
    n_control: int = 0  # control questions scored (test)
    placebo_prefix: str | None = None  # the random prefix of the placebo rows
    format: str = "cloze"
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    figure_stem: ClassVar[str] = "gcg"

    def rows(self, model: str) -> list[Row]:
        """Per prompt mode: test forget rows with and without the prefix (`gcg`, `gcg-none`) and the
        retain row; validation scores in the mode optimized in."""
        out = []
        for mode, s in self.scores.items():
            mine = mode == self.optimized_in and self.val_forget is not None
            vf, vr = (self.val_forget, self.val_retain) if mine else (None, None)
            nf, nr = (self.n_val, self.n_val_retain) if mine else (None, None)
            test = dict(model=model, format=self.format, mode=mode)
            bits = s.correct.get
            out += [Row(**test, attack="gcg", split="forget-heldout", accuracy=s.forget,
                        n=self.n_test, column=f"GCG {mode}",
                        note=f"no prefix {100 * s.forget_no_prefix:.1f}", val=vf, n_val=nf,
                        correct=bits("forget"), questions="forget_test"),
                    Row(**test, attack="gcg-none", split="forget-heldout",
                        accuracy=s.forget_no_prefix, n=self.n_test,
                        correct=bits("forget_no_prefix"), questions="forget_test"),
                    Row(**test, attack="gcg", split="retain", accuracy=s.retain,
                        n=self.n_retain, val=vr, n_val=nr)]
            if s.placebo_forget is not None:
                out.append(Row(**test, attack="gcg-placebo", split="forget-heldout",
                               accuracy=s.placebo_forget, n=self.n_test,
                               column=f"placebo: GCG {mode}", note="random prefix",
                               correct=bits("placebo_forget"), questions="forget_test"))
            if s.control is not None:
                for attack, acc, key in (("gcg", s.control, "control"),
                                         ("gcg-none", s.control_no_prefix, "control_no_prefix"),
                                         ("gcg-placebo", s.placebo_control, "placebo_control")):
                    out.append(Row(**test, attack=attack, split="control", accuracy=acc,
                                   n=self.n_control, correct=bits(key),
                                   questions="control_test"))
        return out

    def plot(self):
        """Best training loss per step, and validation forget accuracy at each evaluation step."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(specs=[[{"secondary_y": True}]])
        steps = list(range(1, len(self.losses) + 1))
        fig.add_trace(go.Scatter(x=steps, y=self.losses, name="best loss (train questions)"))
        held = self.val_per_step
        fig.add_trace(go.Scatter(x=[h["step"] for h in held], y=[h["accuracy"] for h in held],
                                 mode="lines+markers", name="validation forget accuracy"),
                      secondary_y=True)
        fig.update_layout(title="GCG universal prefix", xaxis_title="step",
                          template="plotly_white")
        fig.update_yaxes(title_text="loss", secondary_y=False)
        fig.update_yaxes(title_text="accuracy", secondary_y=True, range=[0, 1])
        return fig

    def curve(self) -> tuple[list[int], list[float]]:
        """Test forget accuracy against candidates evaluated (0: no prefix)."""
        mode = self.scores[self.optimized_in]
        pts = [h for h in self.val_per_step if "test_accuracy" in h]
        return ([0] + [h["candidates"] for h in pts],
                [mode.forget_no_prefix] + [h["test_accuracy"] for h in pts])

    def extra_figures(self) -> dict:
        """`gcg_curve`: test forget accuracy against candidates evaluated."""
        return {"gcg_curve": budget_lines(
            {f"prefix chosen so far ({self.optimized_in})": self.curve()}, n=self.n_test,
            xtitle="candidates evaluated",
            title="GCG: forget accuracy (test) against candidates evaluated")}

    @classmethod
    def extra_model_figures(cls, results: dict[str, Result]) -> dict:
        """`curve`: test forget accuracy against candidates evaluated, one line per protected model
        (none where no model has more than one point)."""
        series = {m: r.curve() for m, r in results.items()}
        if not any(len(xs) > 1 for xs, _ in series.values()):
            return {}
        return {"curve": budget_lines(
            series, n={m: r.n_test for m, r in results.items()},
            baseline={m: r.scores[r.optimized_in].forget_no_prefix for m, r in results.items()},
            xtitle="candidates evaluated",
            title="GCG: forget accuracy (test) against candidates evaluated")}

    @classmethod
    def plot_models(cls, results: dict[str, Result]):
        """Best training loss per step, one line per protected model."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for m, r in results.items():
            fig.add_trace(go.Scatter(x=list(range(1, len(r.losses) + 1)), y=r.losses,
                                     mode="lines+markers", name=m))
        fig.update_layout(title="GCG loss per step (best prefix so far)", xaxis_title="step",
                          yaxis_title="loss", template="plotly_white")
        return fig


def memory_steps(cfg: Config, config: dict, prompt_tokens: int) -> list:
    """The memory plan's steps: the one-hot gradient over the training questions, and one chunk
    of candidate prefixes."""
    n = prompt_tokens + cfg.n_tokens
    return [Workload("gcg gradient", cfg.n_train, n, "inputs", note="training questions"),
            Workload("gcg candidates", cfg.candidate_batch, n, note="one chunk of candidates")]


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Steps of `run` (`interp.cost`): the search, held-out scores during it, the final four."""
    h = capped(sizes.forget_test, cfg.heldout_limit)
    r = capped(sizes.retain_test, cfg.heldout_limit)
    v = capped(sizes.forget_val, cfg.heldout_limit)
    evals = cfg.steps // cfg.eval_every if cfg.eval_every else 0
    if not cfg.eval_every or cfg.steps % cfg.eval_every:
        evals += 1
    c = capped(sizes.control_test, cfg.heldout_limit)
    return {"gcg": cfg.steps, "score": evals * (v + h)
            + capped(sizes.retain_val, cfg.heldout_limit) + 2 * (3 * h + 2 * r + 3 * c)}

def run(model: HookedTransformer, data, cfg: Config | None = None, *,
        original: HookedTransformer | None = None, out: Path | None = None,
        progress: bool = True) -> Result:
    """One universal prefix optimized on the first `n_train` training forget questions (the
    enhanced objective also reads `original`); the step whose prefix does best on validation
    questions is kept and scored raw and in chat on test questions (other entities)."""
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    if cfg.n_train < 1:
        raise InterpError(f"GCG needs at least one training question, got n_train={cfg.n_train}")
    data = as_data(data)
    train = data.questions("forget_train")[: cfg.n_train]
    # other entities than the training ones, by the data's split: the prefix (the step) is
    # chosen on validation questions, the reported scores are on test questions
    val = data.questions("forget_val", limit=cfg.heldout_limit)
    val_retain = data.questions("retain_val", limit=cfg.heldout_limit)
    test = data.questions("forget_test", limit=cfg.heldout_limit)
    retain = data.questions("retain_test", limit=cfg.heldout_limit)
    control = (data.questions("control_test", limit=cfg.heldout_limit)
               if data.has("control_test") else [])
    if not test or not val:
        raise InterpError(f"{data.folder}: no validation or test forget questions for GCG")
    t0 = time.perf_counter()
    r = run_gcg(model, train, val, replace(cfg, progress=cfg.progress and progress),
                original=original, test=test)
    chosen = max(r.val, key=lambda h: (h["accuracy"], h["step"]))
    prefix = get_tokenizer(model).decode(chosen["prefix_ids"])

    def scored(questions, prefix, chat):
        return evaluate(model, questions, prefix=prefix, chat=chat, fmt=cfg.fmt,
                        progress=False, batch_size=32)

    def acc(questions, prefix, chat):
        return scored(questions, prefix, chat).accuracy

    placebo = random_prefix(model, len(chosen["prefix_ids"]), cfg)
    scores = {}
    for mode, chat in (("raw", False), ("chat", True)):
        runs = {"forget_no_prefix": (test, None), "forget": (test, prefix),
                "placebo_forget": (test, placebo)}
        if control:
            runs.update({"control_no_prefix": (control, None), "control": (control, prefix),
                         "placebo_control": (control, placebo)})
        res = {k: scored(qs, p, chat) for k, (qs, p) in runs.items()}
        scores[mode] = ModeScores(retain_no_prefix=acc(retain, None, chat),
                                  retain=acc(retain, prefix, chat),
                                  **{k: r.accuracy for k, r in res.items()},
                                  correct={k: bits(r.correct) for k, r in res.items()})
    result = Result(
        config=cfg, prefix=prefix, prefix_ids=chosen["prefix_ids"], n_train=len(train),
        n_test=len(test), n_retain=len(retain), losses=r.losses,
        val_per_step=r.val, optimized_in="chat" if cfg.chat else "raw", scores=scores,
        chosen_step=chosen["step"], val_forget=chosen["accuracy"],
        val_retain=acc(val_retain, prefix, cfg.chat), n_val=len(val),
        n_val_retain=len(val_retain), n_control=len(control), placebo_prefix=placebo,
        seconds_per_step=round(r.seconds_per_step, 3),
        candidates_per_second=round(r.candidates_per_second, 1),
        candidates_scored=r.candidates_scored, format=cfg.fmt or test[0].format,
        seconds=round(time.perf_counter() - t0, 1))
    return base.save(result, out)
def random_prefix(model: HookedTransformer, length: int, cfg: Config) -> str:
    """The placebo prefix: `length` tokens drawn (seeded by `cfg.seed`) from the tokens the search
    may use, decoded."""
    tok = get_tokenizer(model)
    allowed = allowed_tokens(tok, model.cfg.d_vocab, cfg.allow_non_ascii).nonzero().flatten()
    g = torch.Generator().manual_seed(cfg.seed + 1)
    ids = allowed[torch.randint(len(allowed), (max(1, length),), generator=g)].tolist()
    return tok.decode(ids)


def _search_step(pr, cfg: Config) -> float:
    """`interp plan`'s probe: seconds per search step on training questions."""
    cfg = replace(cfg, steps=pr.steps, eval_every=0, progress=False)
    train = pr.data.questions("forget_train")[: cfg.n_train]
    original = pr.original if cfg.objective == "enhanced" else None
    with timing.step_times() as times:
        run_gcg(pr.model, train, [], cfg, original=original)
    pr.drop_original()
    return timing.median_after_warmup(times)


def probes(cfg: Config) -> dict[str, StepProbe]:
    """How `interp plan` times the kinds `cost` counts (`interp.cost`)."""
    return {"gcg": StepProbe("search step", _search_step, knob="a smaller candidate_batch")}


_LAPTOP = Config(n_tokens=8, steps=15, search_width=32, topk=64, eval_every=5, n_train=4,
                 heldout_limit=100)
SPEC = AttackSpec(
    "gcg", order=40,
    summary="universal adversarial prefix (GCG, plain or enhanced), scored on held-out forget "
            "questions",
    original_if=lambda cfg: cfg.objective == "enhanced",
    presets={
        "smoke": Config(n_tokens=6, steps=10, search_width=64, topk=32, progress=False,
                        n_train=6, heldout_limit=100),
        "laptop": _LAPTOP,
        "paper": Config(n_tokens=20, steps=250, search_width=512, topk=256, candidate_batch=128,
                        objective="enhanced", resid_layers=(7, 15), eval_every=25, n_train=8,
                        heldout_limit=None),
    },
    budgets={"quick": Config(n_tokens=8, steps=10, search_width=32, topk=64, progress=False,
                             n_train=4),
             "full": _LAPTOP})
