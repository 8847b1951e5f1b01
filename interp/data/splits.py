"""Train / validation / test by entity: no entity is in two of them.

`train` is what attacks learn from (difference-in-means prompts, GCG training questions, forget
samples for finetuning and SNIP), `val` is where they make every choice (a layer, a pruning cell,
a GCG step, the audit's best attack), `test` is what every reported number is measured on. The
protections still train on the whole forget corpus: the paper unlearns the whole domain.
"""

from __future__ import annotations

import random
from typing import Hashable, Sequence

from interp.errors import InterpError

FRACTIONS = {"train": 0.35, "val": 0.15}  # test: the rest (half)
SPLITS = ("train", "val", "test")


def split_sizes(n: int, train: float = FRACTIONS["train"], val: float = FRACTIONS["val"],
                max_train: int | None = None, max_val: int | None = None) -> dict[str, int]:
    """How many of `n` entities go to each split (at least one each)."""
    if n < 3:
        raise InterpError(f"a train / validation / test split needs at least 3 entities, got {n}")
    n_train = max(1, round(n * train))
    n_val = max(1, round(n * val))
    if max_train is not None:
        n_train = min(n_train, max_train)
    if max_val is not None:
        n_val = min(n_val, max_val)
    while n_train + n_val >= n:  # keep at least one for test
        if n_train >= n_val and n_train > 1:
            n_train -= 1
        else:
            n_val -= 1
    return {"train": n_train, "val": n_val, "test": n - n_train - n_val}


def assign(keys: Sequence[Hashable], seed: int, **sizes_kwargs) -> dict[Hashable, str]:
    """Each distinct key's split: a seeded shuffle of the sorted keys, cut by `split_sizes`."""
    unique = sorted(set(keys), key=repr)
    random.Random(seed).shuffle(unique)
    sizes = split_sizes(len(unique), **sizes_kwargs)
    out, start = {}, 0
    for split in SPLITS:
        for key in unique[start:start + sizes[split]]:
            out[key] = split
        start += sizes[split]
    return out
