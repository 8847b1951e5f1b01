"""Questions a user brings (forget and retain, any source) laid out as a data folder.

The questions are split by entity (`interp.data.splits`): a seeded quarter of the entities, at
most 64, is the attacks' training side (directions, GCG, the forget samples for finetuning and
pruning), a fifth, at most 200, the validation side (every choice an attack makes), the rest the
test side every number is reported on (`*_test`). Preference pairs (refusal
preferred on forget questions), a forget corpus (each training question with its answer) and the
bundled unrelated passages that name no forget answer complete the layout `DataFolder` reads.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from interp.data.folder import DataFolder
from interp.data.questions import Question
from interp.data.splits import SPLITS, assign, split_sizes
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


def split_counts(n_forget: int, n_retain: int, max_train: int = 64,
                 max_val: int = 200) -> dict[str, int]:
    """How many entities each file of the layout gets (a question is its own entity unless its
    `meta.entity` says otherwise)."""
    f = split_sizes(n_forget, train=0.25, val=0.2, max_train=max_train, max_val=max_val)
    r = split_sizes(n_retain, train=0.25, val=0.2, max_train=max_train, max_val=max_val)
    return {"forget_train": f["train"], "forget_val": f["val"], "forget_test": f["test"],
            "retain_train": r["train"], "retain_val": r["val"], "retain_test": r["test"]}


def prepare_data(forget: list[Question], retain: list[Question], out: Path,
                 original_spec: str, seed: int = 0, max_train: int = 64,
                 max_val: int = 200) -> DataFolder:
    """Write the data layout the protections and attacks read; returns the folder (a finished
    one is returned as it is). Questions are split by entity into train (at most `max_train`
    entities), val (at most `max_val`) and test (the rest: `*_test`)."""
    out = Path(out)
    if (out / "manifest.json").is_file():
        return DataFolder(out)
    forget = [_tagged(q, "forget", i) for i, q in enumerate(forget)]
    retain = [_tagged(q, "retain", i) for i, q in enumerate(retain)]
    n_f = len({q.meta["entity"] for q in forget})
    n_r = len({q.meta["entity"] for q in retain})
    if n_f < 4 or n_r < 3:
        raise InterpError(f"an audit needs at least 4 forget and 3 retain questions (entities); "
                          f"got {n_f} and {n_r}")
    files, entities = {}, {}
    for domain, qs in (("forget", forget), ("retain", retain)):
        split_of = assign([q.meta["entity"] for q in qs], seed, train=0.25, val=0.2,
                          max_train=max_train, max_val=max_val)
        entities[domain] = {s: sum(v == s for v in split_of.values()) for s in SPLITS}
        for split, name in (("train", "train"), ("val", "val"), ("test", "test")):
            files[f"{domain}_{name}"] = [q for q in qs if split_of[q.meta["entity"]] == split]
    f_train, r_train = files["forget_train"], files["retain_train"]
    out.mkdir(parents=True, exist_ok=True)
    for name, qs in files.items():
        atomic_write_text(out / f"{name}.jsonl",
                          "".join(json.dumps(q.to_json()) + "\n" for q in qs))
    pref = [{"prompt": _prompt(q), "format": q.format, "chosen": REFUSAL_TEXT,
             "rejected": _answer_text(q), "split": "forget", "id": q.meta["entity"],
             "entity": q.meta["entity"]}
            for q in f_train]
    pref += [{"prompt": _prompt(q), "format": q.format, "chosen": _answer_text(q),
              "rejected": REFUSAL_TEXT, "split": "retain", "id": q.meta["entity"],
              "entity": q.meta["entity"]}
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
                                       "entities": entities,
                                       "unrelated": len(unrelated)})
    return DataFolder(out)
