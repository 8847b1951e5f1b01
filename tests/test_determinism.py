"""The same seed gives the same model and the same rows, whatever the caller's thread count.

Without torch's deterministic algorithms, two 2-thread trainings of the smoke model differed (the
embedding gradient's `index_put_` accumulated by racing threads); `seed_everything` turns them on.
With 1 and 2 threads the attention gradients still differed from the second step; every gradient
now runs at a fixed thread count (`training.fixed_threads`).
"""

from __future__ import annotations

import torch

from interp.data.build import BENCHMARKS, select_facts, smoke_texts
from interp.model.smoke import SmokeConfig, train_smoke_model


def _train(tokenizer, texts):
    model = train_smoke_model(texts, tokenizer, SmokeConfig(steps=25), device="cpu",
                              progress=False)
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def test_two_trainings_with_two_threads_are_bitwise_identical(bpe_tokenizer):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        forget, retain = select_facts(BENCHMARKS["smoke"], 0)
        texts = smoke_texts(forget, retain)
        first, second = _train(bpe_tokenizer, texts), _train(bpe_tokenizer, texts)
    finally:
        torch.set_num_threads(threads)
    assert first.keys() == second.keys()
    different = [n for n in first if not torch.equal(first[n], second[n])]
    assert not different, different


def test_training_does_not_depend_on_the_callers_thread_count(bpe_tokenizer):
    threads = torch.get_num_threads()
    forget, retain = select_facts(BENCHMARKS["smoke"], 0)
    texts = smoke_texts(forget, retain)
    try:
        torch.set_num_threads(1)
        one = _train(bpe_tokenizer, texts)
        assert torch.get_num_threads() == 1  # restored after training
        torch.set_num_threads(2)
        two = _train(bpe_tokenizer, texts)
    finally:
        torch.set_num_threads(threads)
    different = [n for n in one if not torch.equal(one[n], two[n])]
    assert not different, different
