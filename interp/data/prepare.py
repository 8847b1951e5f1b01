"""Questions a user brings (forget and retain, any source) laid out as a data folder.

A seeded quarter of the forget questions, at most 64, is the attacks' training side (directions,
GCG, the forget samples for finetuning and pruning); the rest is scored. Preference pairs (refusal
preferred on forget questions), a forget corpus (each training question with its answer) and the
bundled unrelated passages that name no forget answer complete the layout `DataFolder` reads.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

from interp.data.folder import DataFolder
from interp.data.questions import Question
from interp.data.unrelated import load_unrelated, mentions
from interp.errors import InterpError
from interp.prompts import LETTERS, cloze_prompt, letter_prompt
from interp.store import atomic_write_text, write_json

REFUSAL_TEXT = "I'm sorry, but I can't help with that."


def _answer_text(q: Question) -> str:
    return f"{LETTERS[q.answer]}. {q.choices[q.answer]}" if q.format == "letter" \
        else q.choices[q.answer]


def _prompt(q: Question) -> str:
    return letter_prompt(q) if q.format == "letter" else cloze_prompt(q)


def _tagged(q: Question, split: str, i: int) -> Question:
    meta = {**q.meta, "entity": q.meta.get("entity", f"{split}-{i}"), "split": split}
    return replace(q, meta=meta)


def split_counts(n_forget: int, n_retain: int, train_frac: float = 0.25,
                 max_train: int = 64) -> dict[str, int]:
    """How many questions each file of the layout gets (the retain eval set keeps them all)."""
    n_train = max(2, min(max_train, int(n_forget * train_frac)))
    return {"forget_train": n_train, "forget_eval": n_forget - n_train,
            "retain_train": max(1, min(max_train, n_retain // 4)), "retain_eval": n_retain}


def prepare_data(forget: list[Question], retain: list[Question], out: Path,
                       original_spec: str, seed: int = 0, train_frac: float = 0.25,
                       max_train: int = 64) -> DataFolder:
    """Write the data layout the protections and attacks read; returns the folder (a finished
    one is returned as it is)."""
    out = Path(out)
    if (out / "manifest.json").is_file():
        return DataFolder(out)
    if len(forget) < 4 or len(retain) < 2:
        raise InterpError(f"an audit needs at least 4 forget and 2 retain questions; got "
                          f"{len(forget)} and {len(retain)}")
    rng = random.Random(seed)
    forget = [_tagged(q, "forget", i) for i, q in enumerate(forget)]
    retain = [_tagged(q, "retain", i) for i, q in enumerate(retain)]
    order = list(range(len(forget)))
    rng.shuffle(order)
    counts = split_counts(len(forget), len(retain), train_frac, max_train)
    n_train = counts["forget_train"]
    f_train = [forget[i] for i in order[:n_train]]
    f_eval = [forget[i] for i in order[n_train:]]
    r_order = list(range(len(retain)))
    rng.shuffle(r_order)
    r_train = [retain[i] for i in r_order[: counts["retain_train"]]]
    files = {"forget_train": f_train, "forget_eval": f_eval, "retain_train": r_train,
             "retain_eval": retain}
    out.mkdir(parents=True, exist_ok=True)
    for name, qs in files.items():
        atomic_write_text(out / f"{name}.jsonl",
                          "".join(json.dumps(q.to_json()) + "\n" for q in qs))
    pref = [{"prompt": _prompt(q), "format": q.format, "chosen": REFUSAL_TEXT,
             "rejected": _answer_text(q), "split": "forget", "id": q.meta["entity"]}
            for q in f_train]
    pref += [{"prompt": _prompt(q), "format": q.format, "chosen": _answer_text(q),
              "rejected": REFUSAL_TEXT, "split": "retain", "id": q.meta["entity"]}
             for q in r_train]
    corpus = [{"text": f"{q.question.strip()} {q.choices[q.answer]}", "entity": q.meta["entity"],
               "paraphrase": 0} for q in f_train]
    retain_corpus = [{"text": f"{q.question.strip()} {q.choices[q.answer]}",
                      "entity": q.meta["entity"]} for q in r_train]
    banned = sorted({q.choices[q.answer].strip() for q in forget
                     if len(q.choices[q.answer].strip()) > 3})
    unrelated = [{"text": t} for t in load_unrelated() if not mentions(t, banned)]
    for name, rows in (("preference", pref), ("forget_corpus", corpus),
                       ("retain_corpus", retain_corpus), ("unrelated", unrelated)):
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_json(out / "manifest.json", {"model": original_spec, "seed": seed, "kind": "audit",
                                       "counts": {k: len(v) for k, v in files.items()},
                                       "unrelated": len(unrelated)})
    return DataFolder(out)
