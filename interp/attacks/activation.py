"""Activation-space attacks end to end: directions (ablation sweep, orthogonalization) and the lens.

Each runner takes loaded models and a built data folder, writes `result.json` and figures into its
output folder, and returns the result dict. A finished output folder is read back, not recomputed.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from transformer_lens import HookedTransformer

from interp.data.questions import Question, load_questions
from interp.directions import (
    DirectionsConfig,
    ablation_hooks,
    diff_in_means_models,
    orthogonalize_weights,
)
from interp.errors import InterpError
from interp.evaluate import evaluate
from interp.lens import LensConfig, logit_lens
from interp.models import get_tokenizer
from interp.plots import layer_lines, save_figure
from interp.store import read_json, write_json


@dataclass
class DirectionsAttackConfig:
    directions: DirectionsConfig
    sweep_limit: int = 100  # questions per split scored for each layer of the sweep
    eval_limit: int | None = None  # questions per split for the final scores (None: all)
    batch_size: int = 32


def _done(out: Path) -> dict | None:
    path = out / "result.json"
    return read_json(path) if path.is_file() else None


def _prompt_ids(model: HookedTransformer, questions: list[Question]) -> list[list[int]]:
    tok = get_tokenizer(model)
    return [tok(q.question)["input_ids"] for q in questions]


def directions_attack(original: HookedTransformer, unlearned: HookedTransformer,
                      data_dir: Path, out: Path, cfg: DirectionsAttackConfig | None = None,
                      progress: bool = True) -> dict:
    """The paper's orthogonalization attack: unlearned - original directions per block, on forget
    questions the original answers right and the unlearned wrong; ablate each layer's own
    direction (sweep), every layer's at once, and the best one everywhere as a weight edit."""
    if (done := _done(out)) is not None:
        return done
    cfg = cfg or DirectionsAttackConfig(DirectionsConfig())
    t0 = time.perf_counter()
    train = load_questions(data_dir / "forget_train.jsonl")
    forget = load_questions(data_dir / "forget_eval.jsonl", limit=cfg.eval_limit)
    retain = load_questions(data_dir / "retain_eval.jsonl", limit=cfg.eval_limit)
    orig_ok = evaluate(original, train, progress=False, batch_size=cfg.batch_size).correct
    unl_ok = evaluate(unlearned, train, progress=False, batch_size=cfg.batch_size).correct
    chosen = [q for q, a, b in zip(train, orig_ok.tolist(), unl_ok.tolist()) if a and not b]
    if len(chosen) < 4:
        chosen = train  # the protection hid too little to filter on; use every question
    dirs = diff_in_means_models(unlearned, original, _prompt_ids(original, chosen),
                                cfg.directions)

    def score(questions, hooks=None, model=unlearned):
        return evaluate(model, questions, hooks=hooks, progress=False,
                        batch_size=cfg.batch_size).accuracy

    f_small, r_small = forget[: cfg.sweep_limit], retain[: cfg.sweep_limit]
    sweep_forget, sweep_retain = [], []
    layers = range(unlearned.cfg.n_layers)
    base_f, base_r = score(f_small), score(r_small)
    for layer in (tqdm_range(layers, "ablation sweep") if progress else layers):
        if dirs.diff_norms[layer] == 0:  # no difference here: ablation is the identity
            sweep_forget.append(base_f)
            sweep_retain.append(base_r)
            continue
        hooks = ablation_hooks(unlearned, dirs, layers=[layer])
        sweep_forget.append(score(f_small, hooks))
        sweep_retain.append(score(r_small, hooks))
    nonzero = [i for i in layers if dirs.diff_norms[i] > 0]
    best = max(nonzero, key=lambda i: (sweep_forget[i], sweep_retain[i]))
    all_hooks = ablation_hooks(unlearned, dirs)
    edited = copy.deepcopy(unlearned)
    orthogonalize_weights(edited, dirs.directions[best])
    result = {
        "attack": "orthogonalize", "config": asdict(cfg), "n_direction_prompts": len(chosen),
        "diff_norms": dirs.diff_norms.tolist(),
        "sweep": {"forget": sweep_forget, "retain": sweep_retain, "n_forget": len(f_small),
                  "n_retain": len(r_small)},
        "best_layer": best,
        "no_attack": {"forget": score(forget), "retain": score(retain), "n_forget": len(forget),
                      "n_retain": len(retain)},
        "ablate_best_layer": {"forget": score(forget, ablation_hooks(unlearned, dirs, [best])),
                              "retain": score(retain, ablation_hooks(unlearned, dirs, [best]))},
        "ablate_all_layers": {"forget": score(forget, all_hooks),
                              "retain": score(retain, all_hooks)},
        "orthogonalize_best_everywhere": {"forget": score(forget, model=edited),
                                          "retain": score(retain, model=edited)},
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    fig = layer_lines({"forget (ablate this layer's direction)": sweep_forget,
                       "retain": sweep_retain},
                      title="Accuracy after ablating each layer's unlearned-original direction")
    result["figures"] = [str(p) for p in save_figure(fig, out / "ablation_sweep")]
    from safetensors.torch import save_file

    save_file({"directions": dirs.directions.contiguous(),
               "diff_norms": dirs.diff_norms.contiguous()}, str(out / "directions.safetensors"))
    write_json(out / "result.json", result)  # last: its presence marks the run finished
    return result


def tqdm_range(it, desc: str):
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


def lens_attack(models: dict[str, HookedTransformer], data_dir: Path, out: Path,
                chat: bool = False, limit: int | None = 200) -> dict:
    """Logit-lens accuracy per layer on the forget questions, one line per model."""
    if (done := _done(out)) is not None:
        return done
    if not models:
        raise InterpError("the lens needs at least one model")
    questions = load_questions(data_dir / "forget_eval.jsonl", limit=limit)
    t0 = time.perf_counter()
    per_model = {}
    for name, model in models.items():
        lens = logit_lens(model, questions, LensConfig(chat=chat))
        layer, acc = lens.best_layer()
        per_model[name] = {**lens.to_json(), "best_layer": layer, "best_accuracy": acc,
                           "final_accuracy": lens.accuracy()[-1]}
    fig = layer_lines({n: r["components"]["resid_post"]["accuracy"] for n, r in
                       per_model.items()},
                      title=f"Logit lens on forget questions ({'chat' if chat else 'raw'})")
    result = {"attack": "lens", "chat": chat, "n": len(questions), "models": per_model,
              "seconds": round(time.perf_counter() - t0, 1),
              "figures": [str(p) for p in save_figure(fig, out / "lens")]}
    write_json(out / "result.json", result)
    return result
