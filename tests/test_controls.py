"""The never-known control, the recovered share and the † mark, against hand computations."""

from __future__ import annotations

import json
import math
import re

import pytest

from interp.data.control import cyclic, hold_out, never_known, split
from interp.data.facts import RELATIONS, Fact
from interp.data.questions import Question
from interp.pipelines.controls import (
    annotate,
    bootstrap_interval,
    mcnemar_greater,
    recovered_share,
)
from interp.results import Row


def _q(entity: str, phrasing: int = 1, answer: int = 0) -> Question:
    return Question(f"The capital of {entity} is", ("Aa", "Bb", "Cc", "Dd"), answer,
                    format="cloze", meta={"relation": "capitals", "entity": entity,
                                          "phrasing": phrasing})


def _named(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


# ------------------------------------------------------------------------------ the control data
def test_smoke_control_is_never_in_any_training_text(smoke_data):
    """No text the smoke model or a smoke protection trains on names a control value, or pairs a
    control entity with its value; the control's distractors are other control values only."""
    from interp.data.build import smoke_texts
    from interp.data.folder import DataFolder

    folder, manifest = smoke_data
    data = DataFolder(folder)
    control = data.questions("control_val") + data.questions("control_test")
    assert manifest["control"]["kind"] == "never-learned"
    assert len({q.meta["entity"] for q in control}) == 12
    values = {q.choices[q.answer] for q in control}
    entities = {q.meta["entity"] for q in control}
    # every text: the model's training texts (rebuilt from the kept facts), corpora, unrelated
    # passages, preference rows, and the attacks' training questions
    kept = [Fact(q.meta["relation"], q.meta["entity"], q.choices[q.answer])
            for q in data.questions("forget_train") + data.questions("retain_train")]
    corpus = data.corpus("forget_corpus") + data.corpus("retain_corpus")
    forget_facts = {(r["relation"], r["entity"]) for r in data.rows("forget_corpus")}
    assert not forget_facts & {("capitals", e) for e in entities}
    texts = corpus + data.corpus("unrelated") + smoke_texts([], kept)
    texts += [json.dumps(r) for r in data.preference()]
    for name in ("forget_train", "retain_train", "forget_val", "forget_test"):
        texts += [json.dumps(q.to_json()) for q in data.questions(name)]
    for v in values:
        assert not any(_named(t, v) for t in texts), v
    for q in control:
        assert set(q.choices) <= values  # distractors: other never-learned values
        assert q.meta["split"] == "control"


def test_smoke_holdout_rebuilds_the_same_texts(smoke_data):
    """The smoke model's texts come from the kept facts only: rebuilding them from the bank with
    the same seed leaves out every control pairing (the training texts themselves, not only the
    files written)."""
    from interp.data.build import BENCHMARKS, select_facts, smoke_texts

    folder, _ = smoke_data
    forget, retain = select_facts(BENCHMARKS["smoke"], 0)
    kept, control = hold_out(forget, retain, 0)
    texts = smoke_texts(kept, retain)
    written = {json.loads(line)["meta"]["entity"] for line in
               (folder / "control_test.jsonl").read_text().splitlines()}
    assert written <= {f.entity for f in control}
    for f in control:
        assert not any(_named(t, f.value) for t in texts)


def test_choice_stems_are_disjoint_from_measurement_stems():
    for name in ("capitals", "seats"):
        rel = RELATIONS[name]
        assert rel.choice and not set(rel.choice) & set(rel.cloze) & set(rel.letter)
        assert not set(rel.choice) & set(rel.cloze)


def test_never_known_reads_only_the_choice_answers():
    facts = [Fact("seats", e, v) for e, v in (("A", "a"), ("B", "b"), ("C", "c"))]
    correct = {("seats", "A"): [False, False], ("seats", "B"): [True, False]}
    assert never_known(facts, correct) == [facts[0]]  # C was never asked: not chosen


def test_control_split_is_by_entity():
    qs = [_q(e, p) for e in "ABCDEF" for p in (1, 2)]
    parts = split(qs, seed=0)
    val = {q.meta["entity"] for q in parts["val"]}
    test = {q.meta["entity"] for q in parts["test"]}
    assert not val & test and val | test == set("ABCDEF") and len(val) == 2


def test_cyclic_rotation_by_hand():
    q = Question("q", ("w", "x", "y", "z"), 1, format="letter")
    r = cyclic(q)
    assert r.choices == ("z", "w", "x", "y") and r.answer == 2
    assert r.choices[r.answer] == q.choices[q.answer]


def test_laptop_control_stems_in_a_built_folder(smoke_data):
    """Control questions are asked in the evaluation phrasings only (never the choice stems)."""
    folder, manifest = smoke_data
    phrasings = set(manifest["control"]["phrasings"])
    for line in (folder / "control_test.jsonl").read_text().splitlines():
        q = json.loads(line)
        assert q["meta"]["phrasing"] in phrasings
        stem = RELATIONS[q["meta"]["relation"]].cloze[q["meta"]["phrasing"]]
        assert q["question"] == stem.format(e=q["meta"]["entity"])[:1].upper() + \
            stem.format(e=q["meta"]["entity"])[1:]


# -------------------------------------------------------------------------------- the statistics
def test_mcnemar_by_hand():
    # 5 discordant pairs, all for a: P(X >= 5 | 5, 1/2) = 1/32
    assert mcnemar_greater("11111000", "00000000") == pytest.approx(1 / 32)
    # 3 wins, 1 loss: P(X >= 3 | 4) = (4 + 1) / 16
    assert mcnemar_greater("1110", "0001") == pytest.approx(5 / 16)
    assert mcnemar_greater("1010", "1010") == 1.0


def test_recovered_share_by_hand_and_its_interval():
    ents = [e for e in "ABCDEFGHIJ" for _ in (0, 1)]
    original = "1" * 20
    unlearned = "0" * 20
    attacked = "11" * 3 + "00" * 7  # 3 of 10 entities back
    share, ci = recovered_share(attacked, unlearned, original, ents, seed=0, n_boot=500)
    assert share == pytest.approx(0.3)
    assert ci[0] <= 0.3 <= ci[1] and 0 <= ci[0] and ci[1] <= 1
    assert recovered_share(attacked, "1" * 20, original, ents) == (None, None)


def test_entity_bootstrap_is_wider_than_treating_phrasings_as_independent():
    """Two phrasings that always agree carry one entity's information: resampling entities gives
    the interval of 10 draws, not of 20."""
    ents = [e for e in "ABCDEFGHIJ" for _ in (0, 1)]
    paired = "11" * 5 + "00" * 5
    single = bootstrap_interval(paired, ents, seed=0, n_boot=4000)
    independent = bootstrap_interval(paired, [str(i) for i in range(20)], seed=0, n_boot=4000)
    assert single[1] - single[0] > independent[1] - independent[0]
    sd = math.sqrt(0.25 / 10)  # the entity-level standard error
    assert single[1] - single[0] == pytest.approx(2 * 1.96 * sd, abs=0.08)


def _row(model, attack, split, acc_bits, questions, **kw):
    return Row(model=model, attack=attack, split=split, format="cloze", mode="raw",
               accuracy=acc_bits.count("1") / len(acc_bits), n=len(acc_bits), correct=acc_bits,
               questions=questions, **kw)


def test_annotate_marks_supplied_and_computes_the_share():
    ents = {"forget_test": [f"f{i}" for i in range(20)],
            "control_test": [f"c{i}" for i in range(20)]}
    rows = [
        _row("original", "none", "forget", "1" * 20, "forget_test"),
        _row("original", "none", "control", "0" * 20, "control_test"),
        _row("rmu", "none", "forget", "0" * 20, "forget_test"),
        _row("rmu", "none", "control", "0" * 20, "control_test"),
        _row("rmu", "teach", "forget", "1" * 10 + "0" * 10, "forget_test"),
        _row("rmu", "teach", "control", "1" * 16 + "0" * 4, "control_test"),
        _row("rmu", "find", "forget", "1" * 10 + "0" * 10, "forget_test"),
        _row("rmu", "find", "control", "1" * 3 + "0" * 17, "control_test"),
    ]
    out = {(r.attack, r.split): r for r in annotate(rows, lambda f: ents[f], n_boot=300)}
    assert out[("teach", "forget")].supplied is True
    assert out[("teach", "forget")].d_control == pytest.approx(0.8)
    assert out[("find", "forget")].supplied is False  # 3/20 is not above chance
    assert out[("find", "forget")].recovered == pytest.approx(0.5)
    assert out[("none", "forget")].recovered is None
    assert out[("find", "forget")].to_json()["ci_kind"] == "entity bootstrap"
