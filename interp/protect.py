"""`interp protect {rmu,npo,dpo}`: train a protection, save the protected model and its numbers.

The output folder holds the protected model (loadable by `load_model`), `protection.json` with the
method's config, forget/retain accuracy before and after (cloze raw; letter raw and chat), the
training losses, and for RMU the model's output on forget prompts, for DPO the fraction of forget
prompts it refuses in chat mode. A finished folder is not trained again; an interrupted training
resumes from its checkpoint.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from transformer_lens import HookedTransformer

from interp.data.questions import load_questions
from interp.errors import InterpError
from interp.evaluate import evaluate, generate_greedy
from interp.models import MODEL_JSON, get_tokenizer, load_model, save_model
from interp.prompts import chat_text
from interp.store import read_json, write_json
from interp.unlearn.common import ProtectData
from interp.unlearn.dpo import DPOConfig, run_dpo
from interp.unlearn.npo import NPOConfig, run_npo
from interp.unlearn.rmu import RMUConfig, run_rmu

METHODS = {"rmu": (RMUConfig, run_rmu), "npo": (NPOConfig, run_npo), "dpo": (DPOConfig, run_dpo)}

# Settings per scale (the paper's recipe, budgets scaled to the model)
PRESET_CONFIGS: dict[str, dict[str, Any]] = {
    "laptop": {
        "rmu": RMUConfig(steer_scale=4.0, alpha=100.0, lr=1e-3, batch_size=8, steps=150),
        "npo": NPOConfig(beta=0.1, retain_weight=1.0, lr=1.5e-4, batch_size=8, steps=60,
                         params="mlp"),
        "dpo": DPOConfig(beta=0.02, lr=2e-4, batch_size=8, steps=50, params="mlp",
                         forget_frac=0.7),
    },
    "smoke": {
        "rmu": RMUConfig(layer=3, steer_scale=8.0, alpha=100.0, lr=3e-2, batch_size=8, steps=300),
        "npo": NPOConfig(beta=0.1, retain_weight=3.0, lr=3e-3, batch_size=8, steps=200,
                         params="mlp"),
        # the smoke model has never seen a refusal: an NLL term on it (sft_weight) teaches one
        "dpo": DPOConfig(beta=0.01, lr=2e-3, batch_size=8, steps=300, params="mlp",
                         forget_frac=0.8, sft_weight=1.0),
    },
    "paper": {
        "rmu": RMUConfig(layer=7, steer_scale=1.0, alpha=1200.0, lr=5e-5, batch_size=4,
                         steps=150, max_len=512),
        "npo": NPOConfig(beta=0.1, lr=1e-5, batch_size=4, steps=250, max_len=512),
        "dpo": DPOConfig(beta=0.1, lr=5e-6, batch_size=4, steps=250),
    },
}

REFUSAL = re.compile(r"(sorry|can't|cannot|can not|unable|not able|won't|I'm afraid)", re.I)


LETTER_LIMIT = 100  # the letter format is at chance for small models: a sample suffices


def measure(model: HookedTransformer, data_dir: Path, progress: bool = False) -> dict:
    """Forget/retain accuracy: cloze (raw) on the eval sets; letter format raw and chat (on the
    first `LETTER_LIMIT` letter questions)."""
    out = {}
    for split in ("forget", "retain"):
        for name, fmt_modes in ((f"{split}_eval", ((None, False),)),
                                (f"{split}_eval_letter", (("letter", False), ("letter", True)))):
            path = Path(data_dir) / f"{name}.jsonl"
            if not path.is_file() or not path.read_text().strip():
                continue
            questions = load_questions(path, limit=LETTER_LIMIT if "letter" in name else None)
            if name.endswith("_eval") and questions[0].format == "letter":
                fmt_modes = ((None, False), (None, True))  # WMDP-style sets: raw and chat
            elif name.endswith("_letter") and f"{split}/letter/raw" in out:
                continue  # the eval set itself is in the letter format
            for fmt, chat in fmt_modes:
                res = evaluate(model, questions, chat=chat, fmt=fmt, progress=progress,
                               batch_size=32)
                key = f"{split}/{fmt or questions[0].format}/{'chat' if chat else 'raw'}"
                out[key] = {"accuracy": res.accuracy, "n": res.n}
    return out


def refusal_rate(model: HookedTransformer, data_dir: Path, limit: int = 64) -> dict:
    """Greedy chat answers to forget questions, and how many of them refuse."""
    questions = load_questions(Path(data_dir) / "forget_eval.jsonl")[:limit]
    tok = get_tokenizer(model)
    prompts = [tok(chat_text(tok, q.question), add_special_tokens=False)["input_ids"]
               for q in questions]
    answers = generate_greedy(model, prompts, max_new_tokens=20)
    refused = [bool(REFUSAL.search(a)) for a in answers]
    return {"refusal_rate": sum(refused) / len(refused), "n": len(refused),
            "examples": [{"prompt": q.question, "answer": a} for q, a in
                         zip(questions[:5], answers[:5])]}


def forget_outputs(model: HookedTransformer, data_dir: Path, n: int = 5) -> list[dict]:
    """The model's raw continuations of forget prompts (RMU: the paper saw gibberish)."""
    questions = load_questions(Path(data_dir) / "forget_eval.jsonl")[:n]
    tok = get_tokenizer(model)
    answers = generate_greedy(model, [tok(q.question)["input_ids"] for q in questions],
                              max_new_tokens=16)
    return [{"prompt": q.question, "output": a} for q, a in zip(questions, answers)]


def baseline(model: HookedTransformer, model_spec: str, data_dir: Path) -> dict:
    """`measure` of the unprotected model, cached in the data folder (same for every method)."""
    path = data_dir / "baseline.json"
    cached = read_json(path) if path.is_file() else {}
    if model_spec not in cached:
        cached[model_spec] = measure(model, data_dir)
        write_json(path, cached)
    return cached[model_spec]


def protect(method: str, model_spec: str, data_dir: Path, out: Path, *, preset: str = "laptop",
            overrides: dict | None = None, device=None, dtype=None, tokenizer=None,
            progress: bool = True) -> dict:
    if method not in METHODS:
        raise InterpError(f"unknown protection {method!r}; use one of {sorted(METHODS)}")
    out = Path(out)
    report_path = out / "protection.json"
    if report_path.is_file() and (out / MODEL_JSON).is_file():
        return read_json(report_path)  # finished earlier
    cfg_cls, run = METHODS[method]
    cfg = PRESET_CONFIGS.get(preset, {}).get(method, cfg_cls())
    if overrides:
        unknown = set(overrides) - set(asdict(cfg))
        if unknown:
            raise InterpError(f"unknown {method} setting(s) {sorted(unknown)}")
        cfg = replace(cfg, **overrides)
    data = ProtectData(Path(data_dir))
    model = load_model(model_spec, device=device, dtype=dtype, tokenizer=tokenizer)
    before = baseline(model, str(model_spec), Path(data_dir))
    start = time.perf_counter()
    result = run(model, data, cfg, run_dir=out / "train", progress=progress)
    seconds = time.perf_counter() - start
    after = measure(model, data_dir)
    report = {"method": method, "model": str(model_spec), "data": str(data_dir),
              "preset": preset, "config": asdict(cfg), "train_seconds": round(seconds, 1),
              "before": before, "after": after, "losses": result.losses}
    if method == "rmu":
        report.update({"layer": result.layer, "steer_coef": result.steer_coef,
                       "typical_resid_norm": result.typical_norm,
                       "forget_outputs": forget_outputs(model, data_dir)})
    if method == "dpo":
        report["refusal"] = refusal_rate(model, data_dir)
    save_model(model, out, meta={"protection": method, "config": asdict(cfg)})
    write_json(report_path, report)
    return report
