"""What the finetuning attack trains on: unrelated passages that name no forget entity, k forget
statements about training-split entities, and the placebo's k statements with their values
shuffled across entities."""

from __future__ import annotations

import random

from interp.data.folder import as_data
from interp.data.unrelated import mentions
from interp.errors import InterpError


def forget_names(data) -> list[str]:
    """Every forget entity and right answer named by the benchmark's forget questions."""
    data = as_data(data)
    names = set()
    for split in ("forget_test", "forget_train"):
        if data.has(split):
            for q in data.questions(split):
                names.add(q.choices[q.answer])
                if q.meta.get("entity"):
                    names.add(q.meta["entity"])
    return sorted(n for n in names if n)


def unrelated_samples(data, n: int, seed: int) -> list[str]:
    """n unrelated passages that name no forget entity or answer (seeded choice)."""
    data = as_data(data)
    banned = forget_names(data)
    texts = [t for t in data.corpus("unrelated") if not mentions(t, banned)]
    if n > len(texts):
        raise InterpError(f"asked for {n} unrelated samples but {data.folder} has {len(texts)}")
    return random.Random(seed).sample(texts, n)


def forget_samples(data, k: int, seed: int) -> tuple[list[str], set[str]]:
    """k forget statements, one per training-split entity (seeded), and the entities they
    cover (never a validation or test entity)."""
    data = as_data(data)
    train = data.train_entities("forget")
    rows = [r for r in data.rows("forget_corpus")
            if r.get("paraphrase", 0) == 0 and r.get("entity") in train]
    if k > len(rows):
        raise InterpError(f"asked for {k} forget samples but {data.folder} has {len(rows)} "
                          "statements about training-split entities")
    chosen = random.Random(seed).sample(rows, k)
    return [r["text"] for r in chosen], {r.get("entity", "") for r in chosen}


def shuffled_samples(data, k: int, seed: int) -> tuple[list[str], set[str]]:
    """The placebo's texts: the k statements of `forget_samples` (same seed), each naming another
    of the k entities' values (a seeded derangement), so nothing true about them is taught."""
    from interp.data.benchmark import render
    from interp.data.facts import RELATIONS, Fact

    data = as_data(data)
    train = data.train_entities("forget")
    rows = [r for r in data.rows("forget_corpus")
            if r.get("paraphrase", 0) == 0 and r.get("entity") in train]
    chosen = random.Random(seed).sample(rows, min(k, len(rows)))
    if len(chosen) < 2:
        raise InterpError(f"the shuffled placebo needs at least 2 statements, got {len(chosen)}")
    values = {(f.relation, f.entity): f.value for rel in {r["relation"] for r in chosen}
              for f in RELATIONS[rel].facts()}
    facts = [Fact(r["relation"], r["entity"], values[(r["relation"], r["entity"])])
             for r in chosen]
    order = list(range(len(facts)))
    random.Random(seed + 1).shuffle(order)
    shifted = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # no fixed point
    texts = [render(RELATIONS[f.relation].statements[0],
                    Fact(f.relation, f.entity, facts[shifted[i]].value))
             for i, f in enumerate(facts)]
    return texts, {f.entity for f in facts}
