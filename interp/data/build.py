"""`interp data build`: the embedded benchmark for a preset, written as JSONL with a manifest.

Steps: choose the preset's facts -> build questions (held-out phrasings and choice orders for
evaluation, phrasing 0 for training) -> write corpora and preference data -> get the preset's
unprotected model (SmolLM2 for `laptop`; for `smoke`, train the tiny model on the corpora) -> keep
only the questions that model answers right (the official code filters the same way) -> split the
kept entities into train / val / test (`interp.data.splits`) -> manifest.

Folder layout::

    forget_train.jsonl  forget_val.jsonl  forget_test.jsonl (test)   (kept, cloze, by entity)
    retain_train.jsonl  retain_val.jsonl  retain_test.jsonl (test)
    forget_test_letter.jsonl  retain_test_letter.jsonl    (letter format, test entities)
    forget_test_unfiltered.jsonl  retain_test_unfiltered.jsonl    (before the filter)
    forget_corpus.jsonl  retain_corpus.jsonl  unrelated.jsonl  preference.jsonl
    manifest.json  [model/ for the smoke preset]
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from interp.data import control
from interp.data.benchmark import QuestionBuilder, preference_rows, statements
from interp.data.facts import RELATIONS, Fact, bank_source, entity_names
from interp.data.questions import Question, save_jsonl
from interp.data.splits import SPLITS, assign
from interp.data.unrelated import load_unrelated, mentions
from interp.errors import InterpError
from interp.store import atomic_write_text, write_json


@dataclass(frozen=True)
class BenchmarkPreset:
    """What `interp data build` builds: the forget relation and retain relations, how many facts of
    each (None: the whole bank), the question format, evaluation and training phrasings, the
    unrelated passages, the model whose right answers are kept, and where distractors come from."""

    name: str
    forget: str = "capitals"
    retain: tuple[str, ...] = ("continents", "elements", "animals", "antonyms")
    format: str = "cloze"
    forget_facts: int | None = None  # None: the whole bank
    retain_facts_per_relation: int | None = None
    eval_phrasings: tuple[int, ...] = (1, 2)
    train_phrasing: int = 0
    unrelated: int | None = None  # None: every bundled passage that passes the filter
    model: str = "smollm2"  # "smoke": the tiny model trained on the corpora
    # distractors drawn from the whole bank, or only from the chosen facts' values: a model
    # trained from scratch on the chosen facts has never seen the other values, and its prior
    # alone would pick the one answer it has seen
    distractors: str = "bank"  # bank | selected
    # the never-known control (`interp.data.control`): "never-learned" (a share of the forget
    # facts left out of every training text), "never-known" (facts the model gets wrong in the
    # choice stems, from the forget relation and `control_relations`), or "none"
    control: str = "never-known"
    control_relations: tuple[str, ...] = ("seats",)


BENCHMARKS = {  # benchmark presets (the questions and corpora of a scale)
    "laptop": BenchmarkPreset("laptop"),
    # 36 forget facts: a third held out as the never-learned control, 24 left to forget
    "smoke": BenchmarkPreset("smoke", forget_facts=36, retain_facts_per_relation=8,
                             eval_phrasings=(1, 2), unrelated=200, model="smoke",
                             distractors="selected", control="never-learned",
                             control_relations=()),
}


def select_facts(preset: BenchmarkPreset, seed: int) -> tuple[list[Fact], list[Fact]]:
    """The preset's (forget, retain) facts, drawn with `seed` (a relation's whole bank where the
    count is None)."""
    rng = random.Random(seed)

    def pick(relation: str, n: int | None) -> list[Fact]:
        facts = RELATIONS[relation].facts()
        return facts if n is None else rng.sample(facts, min(n, len(facts)))

    forget = pick(preset.forget, preset.forget_facts)
    retain = [f for r in preset.retain for f in pick(r, preset.retain_facts_per_relation)]
    return forget, retain


def build_questions(builder: QuestionBuilder, facts: list[Fact], fmt: str,
                    phrasings: tuple[int, ...], split: str) -> list[Question]:
    """Questions on `facts`, one per fact and phrasing, their meta's split set to `split` ("forget"
    or "retain"); facts with no valid question are skipped."""
    out = []
    for fact in facts:
        for ph in phrasings:
            q = builder.build(fact, fmt=fmt, phrasing=ph, split=split)
            if q is not None:
                out.append(q)
    return out


def smoke_texts(forget: list[Fact], retain: list[Fact]) -> list[str]:
    """What the smoke model learns from: the corpus paraphrases and every cloze phrasing."""
    from interp.data.benchmark import render

    texts = [r["text"] for r in statements(forget + retain)]
    for fact in forget + retain:
        for stem in RELATIONS[fact.relation].cloze:
            texts.append(f"{render(stem, fact, value=False)} {fact.value}.")
    return texts


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def build_benchmark(preset_name: str, out: Path, *, seed: int = 0, model_spec: str | None = None,
                    device=None, progress: bool = True, dtype=None, tokenizer=None,
                    letter_ids: str | None = None) -> dict:
    """Build the preset's data folder in `out` (questions filtered to those the model answers right,
    split by entity, corpora, preference data) and return its manifest; `model_spec` overrides the
    preset's model."""
    from interp.model.load import embedded_tokenizer, load_model
    from interp.scoring import evaluate

    if preset_name not in BENCHMARKS:
        raise InterpError(f"unknown preset {preset_name!r}; use one of {sorted(BENCHMARKS)}")
    preset = BENCHMARKS[preset_name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bank_tokenizer = embedded_tokenizer()  # builds the questions; `tokenizer`: the model's
    forget_facts, retain_facts = select_facts(preset, seed)
    held_out: list[Fact] = []
    if preset.control == "never-learned":  # left out of every text before anything is written
        forget_facts, held_out = control.hold_out(forget_facts, retain_facts, seed)
    pools = None
    if preset.distractors == "selected":
        pools = {}
        for fact in forget_facts + retain_facts:
            pools.setdefault(fact.relation, set()).add(fact.value)
    builder = QuestionBuilder(bank_tokenizer, seed=seed, pools=pools)
    sets = {
        "forget_test": build_questions(builder, forget_facts, preset.format,
                                       preset.eval_phrasings, "forget"),
        "forget_train": build_questions(builder, forget_facts, preset.format,
                                        (preset.train_phrasing,), "forget"),
        "retain_test": build_questions(builder, retain_facts, preset.format,
                                       preset.eval_phrasings, "retain"),
        "retain_train": build_questions(builder, retain_facts, preset.format,
                                        (preset.train_phrasing,), "retain"),
    }
    letter = {
        "forget_test_letter": build_questions(builder, forget_facts, "letter", (0,), "forget"),
        "retain_test_letter": build_questions(builder, retain_facts, "letter", (0,), "retain"),
    }

    # corpora
    forget_corpus = statements(forget_facts)
    retain_corpus = statements(retain_facts)
    banned = sorted(entity_names(preset.forget))
    unrelated = [t for t in load_unrelated() if not mentions(t, banned)]
    if preset.unrelated is not None:
        unrelated = unrelated[: preset.unrelated]
    _write_jsonl(out / "forget_corpus.jsonl", forget_corpus)
    _write_jsonl(out / "retain_corpus.jsonl", retain_corpus)
    _write_jsonl(out / "unrelated.jsonl", [{"text": t} for t in unrelated])

    # the unprotected model whose right answers are kept
    if model_spec:
        model = load_model(model_spec, device=device, dtype=dtype, tokenizer=tokenizer,
                           letter_ids=letter_ids)
        model_name = model_spec
    elif preset.model == "smoke":
        from interp.model.smoke import train_smoke_model

        model_dir = out / "model"
        if (model_dir / "interp_model.json").is_file():
            model = load_model(model_dir, device=device, letter_ids=letter_ids)
        else:
            model = train_smoke_model(smoke_texts(forget_facts, retain_facts), bank_tokenizer,
                                      device=device, out=model_dir, progress=progress)
            if letter_ids is not None:
                from interp.scoring import set_letter_ids

                set_letter_ids(model, letter_ids)
        model_name = "model"  # relative to this folder (`DataFolder.model_spec`)
    else:
        model = load_model(preset.model, device=device, dtype=dtype, tokenizer=tokenizer,
                           letter_ids=letter_ids)
        model_name = preset.model

    control_sets, control_about = build_control(preset, model, forget_facts, held_out,
                                                bank_tokenizer, seed, progress, unrelated)
    if control_about.get("forget_entities_moved"):  # never-known facts leave the forget sets
        moved = set(control_about["forget_entities_moved"])
        for name in sets:
            if name.startswith("forget_"):
                sets[name] = [q for q in sets[name] if q.meta["entity"] not in moved]
        for name in letter:
            if name.startswith("forget_"):
                letter[name] = [q for q in letter[name] if q.meta["entity"] not in moved]
    save_jsonl(sets["forget_test"], out / "forget_test_unfiltered.jsonl")
    save_jsonl(sets["retain_test"], out / "retain_test_unfiltered.jsonl")
    before, kept_ids = {}, set()
    for name, qs in sets.items():
        result = evaluate(model, qs, progress=progress)
        before[name] = {"accuracy": result.accuracy, "n": result.n}
        kept = [q for q, ok in zip(qs, result.correct.tolist()) if ok]
        if name.endswith("_test"):
            kept_ids |= {(q.meta["relation"], q.meta["entity"]) for q in kept}
        sets[name] = kept
    # training questions and letter questions only for facts kept in evaluation
    for name in ("forget_train", "retain_train"):
        sets[name] = [q for q in sets[name] if (q.meta["relation"], q.meta["entity"]) in kept_ids]
    # the protections learn from every kept fact; the attacks' splits are by entity
    preference = preference_rows(sets["forget_train"], sets["retain_train"], seed)
    split_of, entities = {}, {}
    for domain in ("forget", "retain"):
        keys = [_key(q) for q in sets[f"{domain}_test"]]
        split_of.update(assign(keys, seed))
        entities[domain] = {s: sum(split_of[k] == s for k in set(keys)) for s in SPLITS}
    for domain in ("forget", "retain"):
        sets[f"{domain}_train"] = [q for q in sets[f"{domain}_train"]
                                   if split_of.get(_key(q)) == "train"]
        evals = sets[f"{domain}_test"]
        sets[f"{domain}_val"] = [q for q in evals if split_of[_key(q)] == "val"]
        sets[f"{domain}_test"] = [q for q in evals if split_of[_key(q)] == "test"]
    for name, qs in letter.items():
        sets[name] = [q for q in qs if split_of.get(_key(q)) == "test"]
    sets.update(control_sets)
    for name, qs in sets.items():
        save_jsonl(qs, out / f"{name}.jsonl")
    _write_jsonl(out / "preference.jsonl", preference)

    manifest = {
        "preset": asdict(preset), "seed": seed, "model": model_name,
        "filter": "keep questions the model answers right (argmax of 4 candidate tokens, raw "
                  "mode); training and letter questions only for facts kept in evaluation",
        "accuracy_before_filtering": before,
        "splits": "by entity: train (the attacks' training side: *_train), val (every choice an "
                  "attack makes: *_val), test (every reported number: *_test, *_test_letter); "
                  "corpora and preference data cover every kept entity",
        "entities": entities,
        "counts": {
            "forget_facts": len(forget_facts), "retain_facts": len(retain_facts),
            **{name: len(qs) for name, qs in sets.items()},
            "forget_corpus": len(forget_corpus), "retain_corpus": len(retain_corpus),
            "unrelated": len(unrelated), "preference": len(preference),
        },
        "control": control_about,
        "sources": {r: bank_source(r) for r in (preset.forget, *preset.retain,
                                                  *preset.control_relations)},
        "unrelated_filter": f"no passage names any of the {len(banned)} {preset.forget} "
                            "entities or values",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def build_control(preset: BenchmarkPreset, model, forget_facts: list[Fact], held_out: list[Fact],
                  tokenizer, seed: int, progress: bool, texts: list[str] = ()
                  ) -> tuple[dict[str, list[Question]], dict]:
    """The control split files (`control_val`, `control_test`) and what the manifest says of them
    (`interp.data.control`); a candidate that any of `texts` (the unrelated passages attacks train
    on) pairs with its value is left out."""
    from interp.scoring import evaluate

    if preset.control == "none":
        return {}, {"kind": "none"}
    about: dict = {"kind": preset.control, "phrasings": list(preset.eval_phrasings)}
    if preset.control == "never-learned":
        facts = held_out
        # distractors only from other never-learned values
        builder = QuestionBuilder(tokenizer, seed=seed + 1,
                                  pools={preset.forget: {f.value for f in held_out}})
        about["rule"] = ("a third of the forget facts, left out of the model's training texts "
                         "and the protections' corpora; distractors from other left-out values")
    elif preset.control == "never-known":
        builder = QuestionBuilder(tokenizer, seed=seed + 1)
        names = {n for r in (preset.forget, *preset.retain) for n in entity_names(r)}
        candidates = list(forget_facts)
        for rel in preset.control_relations:
            candidates += [f for f in RELATIONS[rel].facts() if not control.conflicts(f, names)
                           and not any(control.pairs(t, f) for t in texts)]
        asked = []
        for fact in candidates:
            for i in range(len(RELATIONS[fact.relation].choice)):
                q = builder.build(fact, fmt="cloze", phrasing=i, split="choice", stems="choice")
                if q is not None:
                    asked.append(q)
        ok = evaluate(model, asked, progress=progress).correct.tolist()
        correct: dict[tuple[str, str], list[bool]] = {}
        for q, right in zip(asked, ok):
            correct.setdefault(_key(q), []).append(bool(right))
        facts = control.never_known(candidates, correct)
        about.update({
            "rule": "facts the model gets wrong in every choice stem; measured in the forget "
                    "set's evaluation phrasings, which the choice did not read",
            "choice_stems": {r: list(RELATIONS[r].choice)
                             for r in (preset.forget, *preset.control_relations)},
            "candidates": len(correct), "choice_accuracy": sum(ok) / max(1, len(ok)),
            "forget_entities_moved": sorted(f.entity for f in facts
                                            if f.relation == preset.forget)})
    else:
        raise InterpError(f"unknown control kind {preset.control!r}")
    questions = [control.as_control(q) for q in
                 build_questions(builder, facts, preset.format, preset.eval_phrasings, "control")]
    parts = control.split(questions, seed)
    about.update({"entities": {s: len({_key(q) for q in qs}) for s, qs in parts.items()},
                  "by_relation": {r: sum(f.relation == r for f in facts)
                                  for r in sorted({f.relation for f in facts})}})
    return {f"control_{s}": qs for s, qs in parts.items()}, about


def _key(q: Question) -> tuple[str, str]:
    return (q.meta["relation"], q.meta["entity"])
