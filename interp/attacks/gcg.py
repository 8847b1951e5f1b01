"""`interp attack gcg`: one universal prefix optimized on a few forget questions, scored on the
held-out forget questions (other entities), and on retain questions, raw and chat."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from transformer_lens import HookedTransformer

from interp.data.questions import load_questions
from interp.errors import InterpError
from interp.evaluate import evaluate
from interp.gcg import GCGConfig, run_gcg
from interp.store import read_json, write_json


def gcg_attack(model: HookedTransformer, data_dir: Path, out: Path, cfg: GCGConfig | None = None,
               original: HookedTransformer | None = None, n_train: int = 8,
               heldout_limit: int | None = 100) -> dict:
    cfg = cfg or GCGConfig()
    out = Path(out)
    if (out / "result.json").is_file():
        return read_json(out / "result.json")
    if n_train < 1:
        raise InterpError(f"GCG needs at least one training question, got n_train={n_train}")
    train = load_questions(Path(data_dir) / "forget_train.jsonl")[:n_train]
    entities = {q.meta.get("entity") for q in train}
    heldout = [q for q in load_questions(Path(data_dir) / "forget_eval.jsonl")
               if q.meta.get("entity") not in entities][:heldout_limit]
    retain = load_questions(Path(data_dir) / "retain_eval.jsonl", limit=heldout_limit)
    if not heldout:
        raise InterpError(f"{data_dir}: no held-out forget questions left for GCG")
    t0 = time.perf_counter()
    r = run_gcg(model, train, heldout, cfg, original=original)

    def acc(questions, prefix, chat):
        return evaluate(model, questions, prefix=prefix, chat=chat, fmt=cfg.fmt,
                        progress=False, batch_size=32).accuracy

    scores = {}
    for mode, chat in (("raw", False), ("chat", True)):
        scores[mode] = {
            "forget_no_prefix": acc(heldout, None, chat), "forget": acc(heldout, r.prefix, chat),
            "retain_no_prefix": acc(retain, None, chat), "retain": acc(retain, r.prefix, chat)}
    result = {"attack": "gcg", "config": asdict(cfg), "prefix": r.prefix,
              "prefix_ids": r.prefix_ids, "n_train": len(train), "n_heldout": len(heldout),
              "n_retain": len(retain), "losses": r.losses, "heldout_per_step": r.heldout,
              "optimized_in": "chat" if cfg.chat else "raw", "scores": scores,
              "seconds_per_step": round(r.seconds_per_step, 3),
              "candidates_per_second": round(r.candidates_per_second, 1),
              "candidates_scored": r.candidates_scored,
              "seconds": round(time.perf_counter() - t0, 1)}
    result["figures"] = _figure(result, out)
    write_json(out / "result.json", result)
    return result


def _figure(result: dict, out: Path) -> list[str]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from interp.plots import save_figure

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = list(range(1, len(result["losses"]) + 1))
    fig.add_trace(go.Scatter(x=steps, y=result["losses"], name="best loss (train questions)"))
    held = result["heldout_per_step"]
    fig.add_trace(go.Scatter(x=[h["step"] for h in held], y=[h["accuracy"] for h in held],
                             mode="lines+markers", name="held-out forget accuracy"),
                  secondary_y=True)
    fig.update_layout(title="GCG universal prefix", xaxis_title="step", template="plotly_white")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="accuracy", secondary_y=True, range=[0, 1])
    return [str(p) for p in save_figure(fig, out / "gcg")]
