"""The never-known control: questions on facts the unprotected model is known not to hold.

An attack that raises forget accuracy may recover hidden knowledge or supply new knowledge; only
questions on knowledge known to be absent tell the two apart. Each scale gets its control from
evidence independent of what the control then measures:

- **never learned** (the smoke scale, where the model is trained from scratch): a third of the
  forget facts are left out of every text the model and the protections train on, pairing and
  value alike (`hold_out`); their distractors are other held-out values only, so the model's prior
  over values it has seen cannot push the control below chance;
- **never known** (a pretrained model): the model is asked each candidate fact in cloze stems used
  for nothing else (`Relation.choice`); a fact it gets wrong in all of them is never-known
  (`never_known`), and is then measured in the forget set's own evaluation phrasings, which the
  choice did not look at (choosing and measuring on the same questions would put the original at
  0% by construction and pass regression to the mean off as recovery);
- **the user's own** (`--control FILE`), or for a benchmark without facts, the questions the
  original gets wrong in their given choice order, measured with the choices rotated (`cyclic`).

Control questions are split by entity into `control_val` and `control_test` (`split`).
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from interp.data.facts import Fact
from interp.data.questions import Question

CONTROL_SPLITS = ("val", "test")
VAL_SHARE = 1 / 3  # of the control entities; the rest is test


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


def holdable(fact: Fact, others: Sequence[Fact]) -> bool:
    """Whether `fact` can be left out cleanly: its value names no other fact's entity or value and
    is not its own entity, so no other text the model reads mentions it."""
    if fact.value == fact.entity or _mentions(fact.entity, fact.value):
        return False
    return not any(_mentions(o.entity, fact.value) or _mentions(o.value, fact.value)
                   or _mentions(fact.value, o.value)
                   for o in others if o is not fact)


def hold_out(forget: list[Fact], others: Sequence[Fact], seed: int, share: float = 1 / 3
             ) -> tuple[list[Fact], list[Fact]]:
    """(the forget facts kept, the never-learned control): `share` of the forget facts, drawn with
    `seed` among those `holdable` beside every other fact."""
    everyone = [*forget, *others]
    candidates = [f for f in forget if holdable(f, everyone)]
    n = round(len(forget) * share)
    control = set(random.Random(seed).sample(candidates, min(n, len(candidates))))
    return [f for f in forget if f not in control], [f for f in forget if f in control]


def conflicts(fact: Fact, names: set[str]) -> bool:
    """Whether a candidate's entity or value is one of `names` (another relation's entities and
    values, e.g. Georgia the state and Georgia the country), or its entity is its value."""
    return fact.entity in names or fact.value in names or fact.entity == fact.value


def pairs(text: str, fact: Fact) -> bool:
    """Whether `text` names both the fact's entity and its value."""
    return _mentions(text, fact.entity) and _mentions(text, fact.value)


def never_known(facts: Sequence[Fact], correct: dict[tuple[str, str], list[bool]]) -> list[Fact]:
    """The facts the model got wrong in every choice stem it was asked (`correct`: per
    (relation, entity), one bool per choice-stem question)."""
    return [f for f in facts if (f.relation, f.entity) in correct
            and not any(correct[(f.relation, f.entity)])]


def split(questions: Sequence[Question], seed: int) -> dict[str, list[Question]]:
    """`control_val` / `control_test` by entity: a seeded shuffle of the sorted entities, the first
    `VAL_SHARE` to validation (at least one where there are two or more)."""
    keys = sorted({(q.meta.get("relation", ""), q.meta.get("entity", q.question))
                   for q in questions})
    random.Random(seed).shuffle(keys)
    n_val = max(1, round(len(keys) * VAL_SHARE)) if len(keys) >= 2 else 0
    val = set(keys[:n_val])
    out: dict[str, list[Question]] = {"val": [], "test": []}
    for q in questions:
        key = (q.meta.get("relation", ""), q.meta.get("entity", q.question))
        out["val" if key in val else "test"].append(q)
    return out


def as_control(q: Question) -> Question:
    """`q` marked as a control question (`meta.split`)."""
    return Question(q.question, q.choices, q.answer, q.subject, q.format,
                    {**q.meta, "split": "control"})


def cyclic(q: Question, shift: int = 1) -> Question:
    """`q` with its choices rotated by `shift` places (the answer follows its choice)."""
    k = shift % 4
    choices = q.choices[-k:] + q.choices[:-k] if k else q.choices
    return Question(q.question, tuple(choices), (q.answer + k) % 4, q.subject,  # type: ignore
                    q.format, {**q.meta, "split": "control", "rotated": k})


def write_audit_control(folder, original, control: Sequence[Question] | None = None,
                        seed: int = 0) -> dict:
    """The control files of an audit's data folder: the user's own never-known questions
    (`control`), split by entity; else the validation and test forget questions `original` gets
    wrong in their given choice order, measured with the choices rotated one place (`cyclic`).
    Returns what the manifest says of them."""
    from pathlib import Path

    from interp.data.folder import DataFolder
    from interp.data.questions import save_jsonl
    from interp.scoring import evaluate

    folder = Path(folder)
    if control:
        tagged = [as_control(Question(q.question, q.choices, q.answer, q.subject, q.format,
                                      {**q.meta, "entity": q.meta.get("entity", f"control-{i}")}))
                  for i, q in enumerate(control)]
        parts = split(tagged, seed)
        about = {"kind": "user", "rule": "the user's own never-known questions (--control)"}
    else:
        data = DataFolder(folder)
        parts = {}
        for s in CONTROL_SPLITS:
            qs = data.questions(f"forget_{s}")
            ok = evaluate(original, qs, progress=False, batch_size=32).correct.tolist()
            parts[s] = [cyclic(q) for q, right in zip(qs, ok) if not right]
        about = {"kind": "cyclic", "rule": "forget questions the original gets wrong in their "
                                           "given order, measured with the choices rotated one "
                                           "place"}
    for s, qs in parts.items():
        save_jsonl(qs, folder / f"control_{s}.jsonl")
    about["questions"] = {s: len(qs) for s, qs in parts.items()}
    return about
