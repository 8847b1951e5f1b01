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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformer_lens import HookedTransformer

from interp.data.questions import Question, load_questions
from interp.data.unrelated import mentions
from interp.errors import InterpError
from interp.evaluate import evaluate
from interp.lora import LoRAConfig, lora_adapters
from interp.plots import save_figure
from interp.store import read_json, write_json
from interp.training import TrainConfig, lm_loss, pack, train
from interp.unlearn.common import ProtectData, encode_pair, encode_texts

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


def forget_names(data_dir: Path) -> list[str]:
    """Every forget entity and right answer named by the benchmark's forget questions."""
    names = set()
    for split in ("forget_eval", "forget_train"):
        path = Path(data_dir) / f"{split}.jsonl"
        if path.is_file():
            for q in load_questions(path):
                names.add(q.choices[q.answer])
                if q.meta.get("entity"):
                    names.add(q.meta["entity"])
    return sorted(n for n in names if n)


def unrelated_samples(data_dir: Path, n: int, seed: int) -> list[str]:
    """n unrelated passages that name no forget entity or answer (seeded choice)."""
    banned = forget_names(data_dir)
    texts = [t for t in ProtectData(Path(data_dir)).corpus("unrelated") if not mentions(t, banned)]
    if n > len(texts):
        raise InterpError(f"asked for {n} unrelated samples but {data_dir} has {len(texts)}")
    return random.Random(seed).sample(texts, n)


def forget_samples(data_dir: Path, k: int, seed: int) -> tuple[list[str], set[str]]:
    """k forget statements, one per entity (seeded), and the entities they cover."""
    corpus = _jsonl(Path(data_dir) / "forget_corpus.jsonl")
    rows = [r for r in corpus if r.get("paraphrase", 0) == 0]
    if k > len(rows):
        raise InterpError(f"asked for {k} forget samples but {data_dir} has {len(rows)}")
    chosen = random.Random(seed).sample(rows, k)
    return [r["text"] for r in chosen], {r.get("entity", "") for r in chosen}


def _jsonl(path: Path) -> list[dict]:
    import json

    if not path.is_file():
        raise InterpError(f"{path} is missing; run `interp data build`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def finetune_attack(model: HookedTransformer, data_dir: Path, out: Path,
                    cfg: FinetuneConfig | None = None, progress: bool = True) -> dict:
    cfg = cfg or FinetuneConfig()
    out = Path(out)
    if (out / "result.json").is_file():
        return read_json(out / "result.json")
    t0 = time.perf_counter()
    forget_q = load_questions(Path(data_dir) / "forget_eval.jsonl", limit=cfg.eval_limit)
    retain_q = load_questions(Path(data_dir) / "retain_eval.jsonl", limit=cfg.eval_limit)

    def acc(questions: list[Question]) -> float | None:
        if not questions:
            return None
        return evaluate(model, questions, progress=False, batch_size=32).accuracy

    base = {"forget": acc(forget_q), "retain": acc(retain_q)}
    cells = {}
    plan = [("unrelated", n) for n in cfg.unrelated_n] + [("forget", k) for k in cfg.forget_k]
    for kind, size in plan:
        name = f"{kind}-{'n' if kind == 'unrelated' else 'k'}{size}"
        path = out / "cells" / f"{name}.json"
        if path.is_file() and read_json(path).get("config") == _cfg_json(cfg):
            cells[name] = read_json(path)
            continue
        if kind == "unrelated":
            texts = unrelated_samples(data_dir, size, cfg.seed)
            seqs = [encode_pair(model, WIKI_PROMPT, WIKI_PREFIX + t, chat=True, max_len=cfg.max_len)
                    for t in texts]
            held = []
        else:
            texts, entities = forget_samples(data_dir, size, cfg.seed)
            seqs = [(ids, 1) for ids in encode_texts(model, texts, max_len=cfg.max_len)]
            held = [q for q in forget_q if q.meta.get("entity") not in entities]

        def score(held=held):
            s = {"forget": acc(forget_q), "retain": acc(retain_q)}
            if held:
                s["forget_heldout"] = acc(held)
                s["n_forget_heldout"] = len(held)
            return s

        start = time.perf_counter()
        trained, scores = finetune_cell(model, seqs, cfg, out / "train" / name, score,
                                        progress=progress, desc=f"finetune {name}")
        cells[name] = {"kind": kind, "size": size, **scores, "steps": len(trained.losses),
                       "final_loss": trained.losses[-1] if trained.losses else None,
                       "seconds": round(time.perf_counter() - start, 1),
                       "config": _cfg_json(cfg)}
        write_json(path, cells[name])  # each finished cell is kept
    result = {"attack": "finetune", "config": _cfg_json(cfg),
              "no_attack": {**base, "n_forget": len(forget_q), "n_retain": len(retain_q)},
              "cells": cells, "seconds": round(time.perf_counter() - t0, 1)}
    result["figures"] = _figures(result, out)
    write_json(out / "result.json", result)
    return result


def _cfg_json(cfg: FinetuneConfig) -> dict:
    import json

    return json.loads(json.dumps(asdict(cfg)))


def _figures(result: dict, out: Path) -> list[str]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("unrelated text (n samples)",
                                                        "forget samples (k)"))
    for col, kind in ((1, "unrelated"), (2, "forget")):
        cells = sorted((c for c in result["cells"].values() if c["kind"] == kind),
                       key=lambda c: c["size"])
        xs = ["none"] + [str(c["size"]) for c in cells]
        for split in ("forget", "retain"):
            ys = [result["no_attack"][split]] + [c[split] for c in cells]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{split} ({kind})"),
                          row=1, col=col)
    fig.update_xaxes(type="category")
    fig.update_layout(title="Accuracy after LoRA finetuning", yaxis_title="accuracy",
                      template="plotly_white")
    return [str(p) for p in save_figure(fig, out / "finetune")]

