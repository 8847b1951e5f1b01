"""The embedded benchmark: fact banks, question construction, corpora and the smoke model."""

from __future__ import annotations

import json
import re

from interp.data.benchmark import QuestionBuilder
from interp.data.build import BENCHMARKS
from interp.data.facts import RELATIONS, Fact, bank_source, read_bank
from interp.data.questions import load_questions
from interp.data.unrelated import load_unrelated
from interp.prompts import encode_question


def test_banks_size_and_sources():
    assert len(RELATIONS) >= 5
    assert sum(len(read_bank(r)) for r in RELATIONS) >= 600
    for r in RELATIONS:
        assert bank_source(r).startswith("source:")
        entities = [e for e, _ in read_bank(r)]
        assert len(entities) == len(set(entities)), f"duplicate entity in {r}"


def test_questions_are_well_formed(bpe_tokenizer):
    builder = QuestionBuilder(bpe_tokenizer, seed=3)
    for name, rel in RELATIONS.items():
        values = {v for _, v in read_bank(name)}
        for entity, value in read_bank(name)[:15]:
            q = builder.build(Fact(name, entity, value), fmt="cloze", phrasing=1, split="x")
            assert q is not None
            assert q.choices[q.answer] == value
            assert set(q.choices) <= values and len(set(q.choices)) == 4
            assert entity in q.question and q.question != rel.cloze[0].format(e=entity)
            for chat in (False, True):
                assert len(set(encode_question(bpe_tokenizer, q, chat=chat).candidates)) == 4


def test_questions_are_seeded(bpe_tokenizer):
    fact = Fact("capitals", "France", "Paris")
    a = QuestionBuilder(bpe_tokenizer, seed=7).build(fact, fmt="cloze", phrasing=1, split="x")
    b = QuestionBuilder(bpe_tokenizer, seed=7).build(fact, fmt="cloze", phrasing=1, split="x")
    assert a == b


def _names_in(text: str, names: set[str]) -> set[str]:
    """Independent check: whole-word, case-sensitive occurrences via a token scan."""
    words = re.findall(r"[A-Za-z\u00C0-\u024F'\-]+", text)
    found = set()
    for n in names:
        parts = n.split()
        for i in range(len(words) - len(parts) + 1):
            if words[i:i + len(parts)] == parts:
                found.add(n)
    return found


def test_unrelated_corpus_names_no_forget_entity(smoke_data):
    folder, _ = smoke_data
    forget = BENCHMARKS["laptop"].forget
    names = {x for pair in read_bank(forget) for x in pair}
    rows = [json.loads(line)["text"] for line in (folder / "unrelated.jsonl").read_text()
            .splitlines()]
    assert rows
    for text in rows:
        assert not _names_in(text, names), text


def test_bundled_unrelated_has_enough_clean_passages():
    from interp.data.unrelated import mentions

    names = sorted({x for pair in read_bank("capitals") for x in pair})
    clean = [t for t in load_unrelated() if not mentions(t, names)]
    assert len(clean) >= 1000


def test_smoke_benchmark(smoke_data):
    folder, manifest = smoke_data
    before = manifest["accuracy_before_filtering"]
    # the smoke model learned its facts: >= 85% before filtering, forget and retain
    assert before["forget_test"]["accuracy"] >= 0.85
    assert before["retain_test"]["accuracy"] >= 0.85
    counts = manifest["counts"]
    # train / val / test by entity: disjoint, each non-empty, counted in the manifest
    for domain in ("forget", "retain"):
        ents = {split: {(q.meta["relation"], q.meta["entity"]) for q in
                        load_questions(folder / f"{domain}_{name}.jsonl")}
                for split, name in (("train", "train"), ("val", "val"), ("test", "test"))}
        assert all(ents.values())
        assert not (ents["train"] & ents["val"] or ents["train"] & ents["test"]
                    or ents["val"] & ents["test"])
        assert ents["val"] | ents["test"] == {(q.meta["relation"], q.meta["entity"]) for q in
                                              load_questions(folder / f"{domain}_val.jsonl") +
                                              load_questions(folder / f"{domain}_test.jsonl")}
        for split in ("val", "test"):
            assert len(ents[split]) == manifest["entities"][domain][split]
        assert len(ents["train"]) <= manifest["entities"][domain]["train"]
    for name in ("forget_test", "retain_test", "forget_train", "retain_train", "forget_val",
                 "retain_val"):
        qs = load_questions(folder / f"{name}.jsonl")
        assert len(qs) == counts[name] > 0
        assert all(q.format == "cloze" for q in qs)
    forget = {q.meta["entity"] for q in load_questions(folder / "forget_test.jsonl")}
    retain = load_questions(folder / "retain_test.jsonl")
    assert {q.meta["relation"] for q in retain} == set(BENCHMARKS["smoke"].retain)
    assert all(q.meta["relation"] == "capitals" for q in
               load_questions(folder / "forget_test.jsonl"))
    assert forget
    prefs = [json.loads(x) for x in (folder / "preference.jsonl").read_text().splitlines()]
    assert {p["split"] for p in prefs} == {"forget", "retain"}
    from interp.data.benchmark import REFUSALS

    forget_rows = [p for p in prefs if p["split"] == "forget"]
    assert all(p["chosen"] in REFUSALS for p in forget_rows)
    # the rejected completion is the right answer to that very question
    by_id = {q.meta["id"]: q for q in load_questions(folder / "forget_train.jsonl")}
    checked = [p for p in forget_rows if p["id"] in by_id]
    assert checked
    for p in checked:
        q = by_id[p["id"]]
        assert p["rejected"] == q.choices[q.answer] + "."
    # the protections learn every kept fact, not only the attacks' training entities
    assert {p["entity"] for p in forget_rows} > {q.meta["entity"] for q in by_id.values()}
    assert (folder / "model" / "interp_model.json").is_file()


def test_distractors_come_from_the_pool_when_given(bpe_tokenizer):
    values = [v for _, v in read_bank("capitals")]
    pool = set(values[:8])
    builder = QuestionBuilder(bpe_tokenizer, seed=1, pools={"capitals": pool})
    built = [builder.build(Fact("capitals", e, v), fmt="cloze", phrasing=1, split="x")
             for e, v in read_bank("capitals")[:8]]
    assert sum(q is not None for q in built) >= 6
    for q, (_, value) in zip(built, read_bank("capitals")[:8]):
        if q is not None:
            assert set(q.choices) <= pool and q.choices[q.answer] == value
    # a pool with fewer than three other values falls back to the whole bank
    small = QuestionBuilder(bpe_tokenizer, seed=1, pools={"capitals": set(values[:2])})
    entity, value = read_bank("capitals")[0]
    q = small.build(Fact("capitals", entity, value), fmt="cloze", phrasing=1, split="x")
    assert q is not None and not set(q.choices) <= set(values[:2])


def test_build_with_a_model_spec_and_no_tokenizer_override(tiny_llama_dir, tmp_path):
    """The model-spec path of the build (the laptop path's): the builder's own tokenizer is not
    passed as the model's tokenizer override (it was, and loading failed)."""
    from interp.data.build import build_benchmark

    manifest = build_benchmark("laptop", tmp_path / "data", model_spec=str(tiny_llama_dir),
                               device="cpu", progress=False)
    assert manifest["model"] == str(tiny_llama_dir)
    assert all(manifest["entities"][d][s] > 0 for d in ("forget", "retain")
               for s in ("train", "val", "test"))
