"""The same seed gives the same model: training is bitwise repeatable at a given thread count.

Without torch's deterministic algorithms, two 2-thread trainings of the smoke model differed (the
embedding gradient's `index_put_` accumulated by racing threads); `seed_everything` turns them on.
"""

from __future__ import annotations

import torch

from interp.data.build import PRESETS, select_facts, smoke_texts
from interp.model.smoke import SmokeConfig, train_smoke_model


def _train(tokenizer, texts):
    model = train_smoke_model(texts, tokenizer, SmokeConfig(steps=25), device="cpu",
                              progress=False)
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def test_two_trainings_with_two_threads_are_bitwise_identical(bpe_tokenizer):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        forget, retain = select_facts(PRESETS["smoke"], 0)
        texts = smoke_texts(forget, retain)
        first, second = _train(bpe_tokenizer, texts), _train(bpe_tokenizer, texts)
    finally:
        torch.set_num_threads(threads)
    assert first.keys() == second.keys()
    different = [n for n in first if not torch.equal(first[n], second[n])]
    assert not different, different
