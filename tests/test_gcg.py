"""GCG on a tiny model: gradient ranking vs true swaps, loss goes down, exact repeats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.attacks.gcg import (
    GCGConfig,
    Objective,
    allowed_tokens,
    initial_prefix,
    question_slots,
    round_trips,
    run_gcg,
)
from interp.data.questions import Question
from interp.errors import InterpError
from interp.model.load import get_tokenizer
from interp.prompts import encode_question

from .conftest import WMDP_ROWS


def _questions():
    return [Question(question=r["question"], choices=r["choices"], answer=r["answer"],
                     subject="biology") for r in WMDP_ROWS]


def _objective(model, cfg):
    tok = get_tokenizer(model)
    slots = [question_slots(tok, q, chat=cfg.chat, fmt="letter") for q in _questions()]
    return Objective(model, slots, cfg, original=model)


def test_gradient_ranks_single_swaps_like_the_true_loss_change(tiny_model):
    cfg = GCGConfig(n_tokens=5, fmt="letter")
    obj = _objective(tiny_model, cfg)
    tok = get_tokenizer(tiny_model)
    prefix = torch.tensor(initial_prefix(tok, cfg))
    grad = obj.token_gradient(prefix)
    base = float(obj.losses(prefix[None])[0])
    gen = torch.Generator().manual_seed(0)
    allowed = allowed_tokens(tok, tiny_model.cfg.d_vocab, False).nonzero()[:, 0]
    predicted, actual = [], []
    for _ in range(150):
        pos = int(torch.randint(0, 5, (1,), generator=gen))
        new = int(allowed[torch.randint(0, len(allowed), (1,), generator=gen)])
        cand = prefix.clone()
        cand[pos] = new
        predicted.append(float(grad[pos, new] - grad[pos, prefix[pos]]))
        actual.append(float(obj.losses(cand[None])[0]) - base)
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    spearman = np.corrcoef(rank(predicted), rank(actual))[0, 1]
    assert spearman > 0.3, spearman


def test_optimized_sequence_is_what_the_scorer_sees(bpe_tokenizer):
    """Before + prefix + after, tokenized apart, equals the scorer's joint tokenization."""
    prefix_ids = bpe_tokenizer("zq Paris!! tok", add_special_tokens=False)["input_ids"]
    prefix = bpe_tokenizer.decode(prefix_ids)
    for chat in (False, True):
        for q in _questions():
            s = question_slots(bpe_tokenizer, q, chat=chat, fmt="letter")
            joint = encode_question(bpe_tokenizer, q, chat=chat, prefix=prefix, fmt="letter")
            assert s.before + prefix_ids + s.after == joint.ids
            assert s.target == joint.candidates[q.answer]


def test_gcg_lowers_the_loss_and_repeats_exactly(tiny_model):
    cfg = GCGConfig(n_tokens=5, steps=6, search_width=32, topk=16, fmt="letter",
                    progress=False, seed=3)
    qs = _questions()
    a = run_gcg(tiny_model, qs[:2], qs[2:], cfg)
    tok = get_tokenizer(tiny_model)
    obj = _objective(tiny_model, cfg)
    start = float(Objective(tiny_model, obj.slots[:2], cfg).losses(
        torch.tensor(initial_prefix(tok, cfg))[None])[0])
    assert a.losses[-1] < start
    assert all(x >= y for x, y in zip(a.losses, a.losses[1:]))  # the buffer keeps the best
    assert round_trips(tok, a.prefix_ids)
    assert a.candidates_scored > 0 and len(a.val) == 1
    b = run_gcg(tiny_model, qs[:2], qs[2:], cfg)
    assert (a.prefix_ids, a.losses) == (b.prefix_ids, b.losses)


def test_enhanced_objective_adds_the_residual_distance(tiny_model):
    cfg = GCGConfig(n_tokens=4, fmt="letter", objective="enhanced", resid_layers=(0, 1),
                    resid_weight=2.0)
    tok = get_tokenizer(tiny_model)
    prefix = torch.tensor(initial_prefix(tok, cfg))[None]
    plain = _objective(tiny_model, GCGConfig(n_tokens=4, fmt="letter")).losses(prefix)
    enhanced = _objective(tiny_model, cfg).losses(prefix)
    assert float(enhanced[0]) > float(plain[0])  # a prefix moves the residuals: distance > 0
    with pytest.raises(InterpError, match="layers"):
        _objective(tiny_model, GCGConfig(objective="enhanced", resid_layers=(9,), fmt="letter"))


def test_token_sequences_that_do_not_tokenize_back_are_caught(bpe_tokenizer):
    tok = bpe_tokenizer
    the = tok("the", add_special_tokens=False)["input_ids"]
    assert len(the) == 1  # "the" is one token, so "t" + "he" re-encodes differently
    split = tok("t", add_special_tokens=False)["input_ids"] + tok("he", add_special_tokens=False)[
        "input_ids"]
    assert not round_trips(tok, split)
    assert round_trips(tok, the)
    ok = allowed_tokens(tok, len(tok), allow_non_ascii=False)
    assert ok[the[0]] and not ok[tok.eos_token_id]


def test_allowed_tokens_are_computed_once_per_tokenizer(bpe_tokenizer, monkeypatch):
    """The second call (another tokenizer object, the same serialization) is the memo, and equals
    the computation; another setting is computed."""
    import copy

    from interp.attacks import gcg_tokens

    first = allowed_tokens(bpe_tokenizer, len(bpe_tokenizer), allow_non_ascii=False)
    calls = []
    real = gcg_tokens._allowed_tokens
    monkeypatch.setattr(gcg_tokens, "_allowed_tokens",
                        lambda *a: calls.append(a) or real(*a))
    again = allowed_tokens(copy.deepcopy(bpe_tokenizer), len(bpe_tokenizer), False)
    assert not calls and torch.equal(again, first)
    assert torch.equal(first, real(bpe_tokenizer, len(bpe_tokenizer), False))
    allowed_tokens(bpe_tokenizer, len(bpe_tokenizer), allow_non_ascii=True)
    assert len(calls) == 1


@pytest.mark.parametrize("objective,fluency", [("plain", 0.0), ("enhanced", 0.5)])
def test_shared_context_cache_equals_the_full_forward(tiny_model, objective, fluency):
    """Candidates reading the chat template's keys and values from the cache (right-padded rows)
    get the losses and token gradients of full left-padded forward passes."""
    base = GCGConfig(n_tokens=4, fmt="letter", chat=True, objective=objective,
                     resid_layers=(0, 1) if objective == "enhanced" else (),
                     fluency_weight=fluency)
    fast = _objective(tiny_model, base)
    slow = _objective(tiny_model, GCGConfig(**{**base.__dict__, "reuse_before": False}))
    assert fast.shared and not slow.shared and len(fast.slots[0].before) > 3
    tok = get_tokenizer(tiny_model)
    prefix = torch.tensor(initial_prefix(tok, base))
    gen = torch.Generator().manual_seed(1)
    allowed = allowed_tokens(tok, tiny_model.cfg.d_vocab, False).nonzero()[:, 0]
    cands = prefix.repeat(6, 1)
    cands[:, 1] = allowed[torch.randint(0, len(allowed), (6,), generator=gen)]
    torch.testing.assert_close(fast.losses(cands), slow.losses(cands), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.token_gradient(prefix), slow.token_gradient(prefix),
                               atol=1e-4, rtol=1e-3)
