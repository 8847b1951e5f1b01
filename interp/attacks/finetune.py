"""`interp attack finetune`: LoRA-finetune a protected model, then score it.

Two kinds of cells, each a fresh set of adapters on the protected model:
- `unrelated-nN`: N passages of unrelated text (no forget entity or answer named in it) in the
  paper's chat format: "Write a wikipedia article." -> "Of course, here is a wikipedia article. "
  + text; the loss counts the response only.
- `forget-kK`: K forget statements (one per entity, raw text). Scored on all forget questions and
  on the held-out ones (entities not trained on).

Each cell trains with the toolkit's one loop (checkpoints under the cell folder, so an interrupted
cell resumes) and writes `cells/NAME.json` atomically; finished cells are not trained again. The
adapters are scored in place (merging gives the same logits; tested) and removed afterwards.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from transformer_lens import HookedTransformer

from interp.attacks import base
from interp.attacks.base import AttackSpec, Baseline, Row, Scores
from interp.cost import capped
from interp.data.folder import as_data
from interp.data.questions import Question
from interp.data.unrelated import mentions
from interp.errors import InterpError
from interp.model.lora import LoRAConfig, lora_adapters
from interp.plots import error_bars
from interp.protections.common import encode_pair, encode_texts
from interp.scoring import evaluate
from interp.store import read_json, write_json
from interp.training import TrainConfig, lm_loss, pack, train

WIKI_PROMPT = "Write a wikipedia article."
WIKI_PREFIX = "Of course, here is a wikipedia article. "


@dataclass
class FinetuneConfig:
    unrelated_n: tuple[int, ...] = (10, 100, 1000)
    forget_k: tuple[int, ...] = (5, 10, 50)
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(rank=16, alpha=16.0))
    lr: float = 2e-4
    epochs: int = 3
    batch_size: int = 8
    min_steps: int = 0  # small sets repeat epochs until this many steps
    max_steps: int | None = None  # cap on optimizer steps per cell
    warmup_frac: float = 0.05
    max_len: int = 128
    eval_limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if any(int(v) < 1 for v in (*self.unrelated_n, *self.forget_k)):
            raise InterpError(f"finetune sample counts (unrelated_n, forget_k) must be at least "
                              f"1, got {list(self.unrelated_n)} and {list(self.forget_k)}")


def forget_names(data) -> list[str]:
    """Every forget entity and right answer named by the benchmark's forget questions."""
    data = as_data(data)
    names = set()
    for split in ("forget_eval", "forget_train"):
        if data.has(split):
            for q in data.questions(split):
                names.add(q.choices[q.answer])
                if q.meta.get("entity"):
                    names.add(q.meta["entity"])
    return sorted(n for n in names if n)


def unrelated_samples(data, n: int, seed: int) -> list[str]:
    """n unrelated passages that name no forget entity or answer (seeded choice)."""
    data = as_data(data)
    banned = forget_names(data)
    texts = [t for t in data.corpus("unrelated") if not mentions(t, banned)]
    if n > len(texts):
        raise InterpError(f"asked for {n} unrelated samples but {data.folder} has {len(texts)}")
    return random.Random(seed).sample(texts, n)


def forget_samples(data, k: int, seed: int) -> tuple[list[str], set[str]]:
    """k forget statements, one per entity (seeded), and the entities they cover."""
    data = as_data(data)
    rows = [r for r in data.rows("forget_corpus") if r.get("paraphrase", 0) == 0]
    if k > len(rows):
        raise InterpError(f"asked for {k} forget samples but {data.folder} has {len(rows)}")
    chosen = random.Random(seed).sample(rows, k)
    return [r["text"] for r in chosen], {r.get("entity", "") for r in chosen}


def _epoch_batches(n: int, cfg: FinetuneConfig) -> tuple[int, list[list[int]]]:
    """Shuffled epochs of indices cut into batches; a pure function of (n, seed).

    `epochs` passes over the data, more when a small set needs them to reach `min_steps`."""
    per_epoch = math.ceil(n / cfg.batch_size)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / per_epoch))
    batches: list[list[int]] = []
    for epoch in range(epochs):
        perm = list(range(n))
        random.Random(cfg.seed * 7919 + epoch).shuffle(perm)
        batches += [perm[i:i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
    steps = len(batches) if cfg.max_steps is None else min(len(batches), cfg.max_steps)
    return max(1, steps), batches


def finetune_cell(model: HookedTransformer, seqs: list[tuple[list[int], int]], cfg: FinetuneConfig,
                  run_dir: Path | None, score, progress: bool = True, desc: str = "finetune"):
    """Train fresh adapters on `seqs` (token ids, first counted token); score with them on."""
    steps, batches = _epoch_batches(len(seqs), cfg)
    device = model.cfg.device
    with lora_adapters(model, cfg.lora) as params:
        names = [f"lora{i}" for i in range(len(params))]

        def batch_at(step, micro):
            idx = batches[step % len(batches)]
            return pack([seqs[i][0] for i in idx], [seqs[i][1] for i in idx], 0, device)

        tcfg = TrainConfig(steps=steps, lr=cfg.lr, warmup_frac=cfg.warmup_frac, seed=cfg.seed,
                           schedule="linear", desc=desc, progress=progress)
        model.train()
        try:
            result = train(params, lambda b: lm_loss(model, b), batch_at, tcfg, run_dir=run_dir,
                           param_names=names)
        finally:
            model.eval()
        return result, score()


SPEC = AttackSpec("finetune", order=10, summary="LoRA finetuning on unrelated text (n samples) "
                  "or on k forget samples")


@dataclass
class Cell:
    kind: str  # "unrelated" or "forget"
    size: int
    forget: float
    retain: float
    steps: int
    final_loss: float | None
    seconds: float
    config: dict
    forget_heldout: float | None = None  # forget cells: entities not trained on
    n_forget_heldout: int | None = None


@dataclass
class Result(base.Result):
    config: FinetuneConfig
    no_attack: Baseline
    cells: dict[str, Cell]
    format: str = "cloze"
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    figure_stem: ClassVar[str] = "finetune"

    def rows(self, model: str) -> list[Row]:
        out = []
        for name, c in self.cells.items():
            attack = f"finetune-{name}"
            out += base.score_rows(model, attack, Scores(c.forget, c.retain), self.no_attack,
                                   self.format, f"ft {name}")
            if c.forget_heldout is not None:
                out.append(Row(model, attack, "forget-heldout", self.format, "raw",
                               c.forget_heldout, c.n_forget_heldout))
        return out

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("unrelated text (n samples)",
                                                            "forget samples (k)"))
        for col, kind in ((1, "unrelated"), (2, "forget")):
            cells = sorted((c for c in self.cells.values() if c.kind == kind),
                           key=lambda c: c.size)
            xs = ["none"] + [str(c.size) for c in cells]
            for split in ("forget", "retain"):
                ys = [getattr(self.no_attack, split)] + [getattr(c, split) for c in cells]
                n = getattr(self.no_attack, f"n_{split}")
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers",
                                         name=f"{split} ({kind})", error_y=error_bars(ys, n)),
                              row=1, col=col)
        fig.update_xaxes(type="category")
        fig.update_layout(title="Accuracy after LoRA finetuning", yaxis_title="accuracy",
                          template="plotly_white")
        return fig

    @classmethod
    def plot_models(cls, results: dict[str, Result]):
        import plotly.express as px
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        colors = px.colors.qualitative.Plotly
        fig = make_subplots(rows=1, cols=2, subplot_titles=("unrelated text (n samples)",
                                                            "forget samples (k)"))
        for col, kind in ((1, "unrelated"), (2, "forget")):
            for i, (m, r) in enumerate(results.items()):
                color = colors[i % len(colors)]
                done = sorted((c for c in r.cells.values() if c.kind == kind),
                              key=lambda c: c.size)
                ys = [r.no_attack.forget] + [c.forget for c in done]
                fig.add_trace(go.Scatter(
                    x=["none"] + [str(c.size) for c in done], y=ys,
                    error_y=error_bars(ys, r.no_attack.n_forget),
                    mode="lines+markers", name=m, legendgroup=m, showlegend=col == 1,
                    line={"color": color}, marker={"color": color}), row=1, col=col)
        fig.update_xaxes(type="category")
        fig.update_layout(title="Forget accuracy after LoRA finetuning", yaxis_title="accuracy",
                          template="plotly_white")
        return fig


Config = FinetuneConfig


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Steps of `run` (`interp.cost`): every cell's optimizer steps and scores."""
    f, r = capped(sizes.forget_eval, cfg.eval_limit), capped(sizes.retain_eval, cfg.eval_limit)
    cells = (*cfg.unrelated_n, *cfg.forget_k)
    return {"lora": sum(_epoch_batches(n, cfg)[0] for n in cells),
            "score": (1 + len(cells)) * (f + r) + len(cfg.forget_k) * f}

def run(model: HookedTransformer, data, cfg: Config | None = None, *, original=None,
        out: Path | None = None, progress: bool = True) -> Result:
    """One cell per unrelated n and forget k: fresh adapters trained, scored, removed. With
    `out`, each finished cell is kept (`cells/NAME.json`) and training checkpoints resume."""
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    data = as_data(data)
    t0 = time.perf_counter()
    forget_q = data.questions("forget_eval", limit=cfg.eval_limit)
    retain_q = data.questions("retain_eval", limit=cfg.eval_limit)

    def acc(questions: list[Question]) -> float | None:
        if not questions:
            return None
        return evaluate(model, questions, progress=False, batch_size=32).accuracy

    no_attack = Baseline(acc(forget_q), acc(retain_q), len(forget_q), len(retain_q))
    cells = {}
    config = base.to_jsonable(cfg)
    plan = [("unrelated", n) for n in cfg.unrelated_n] + [("forget", k) for k in cfg.forget_k]
    for kind, size in plan:
        name = f"{kind}-{'n' if kind == 'unrelated' else 'k'}{size}"
        path = Path(out) / "cells" / f"{name}.json" if out is not None else None
        if path is not None and path.is_file() and read_json(path).get("config") == config:
            cells[name] = Cell(**read_json(path))
            continue
        if kind == "unrelated":
            texts = unrelated_samples(data, size, cfg.seed)
            seqs = [encode_pair(model, WIKI_PROMPT, WIKI_PREFIX + t, chat=True, max_len=cfg.max_len)
                    for t in texts]
            held = []
        else:
            texts, entities = forget_samples(data, size, cfg.seed)
            seqs = [(ids, 1) for ids in encode_texts(model, texts, max_len=cfg.max_len)]
            held = [q for q in forget_q if q.meta.get("entity") not in entities]

        def score(held=held):
            s = {"forget": acc(forget_q), "retain": acc(retain_q)}
            if held:
                s["forget_heldout"] = acc(held)
                s["n_forget_heldout"] = len(held)
            return s

        start = time.perf_counter()
        run_dir = Path(out) / "train" / name if out is not None else None
        trained, scores = finetune_cell(model, seqs, cfg, run_dir, score, progress=progress,
                                        desc=f"finetune {name}")
        cells[name] = Cell(kind=kind, size=size, **scores, steps=len(trained.losses),
                           final_loss=trained.losses[-1] if trained.losses else None,
                           seconds=round(time.perf_counter() - start, 1), config=config)
        if path is not None:
            write_json(path, base.to_jsonable(cells[name]))  # each finished cell is kept
    result = Result(config=cfg, no_attack=no_attack, cells=cells, format=forget_q[0].format,
                    seconds=round(time.perf_counter() - t0, 1))
    return base.save(result, out)
