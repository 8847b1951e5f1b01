"""What interp keeps about a model (`interp.model.state`): copies score as the original, do not
pass for the untouched loaded model, and a plain deep copy is refused rather than scored with
another tokenizer."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import interp
from interp import score_cache, scoring
from interp.data.questions import Question
from interp.errors import InterpError
from interp.model import state
from interp.model.load import load_model, save_model
from interp.model.lora import LoRAConfig, add_lora, merge_lora
from interp.model.state import copy_model, find_state, get_tokenizer, model_state

QUESTIONS = [
    Question("Which is a planet?", ("Mars", "Moon", "Sun", "Comet"), 0),
    Question("Which is a metal?", ("Wood", "Iron", "Glass", "Clay"), 1),
    Question("The capital of Peru is", ("Paris", "Rome", "Oslo", "Lima"), 3, format="cloze"),
]


def test_a_copy_scores_as_the_original(tiny_model):
    model = copy_model(tiny_model)
    scoring.set_letter_ids(model, "official")
    twin = copy_model(model)
    assert get_tokenizer(twin) is get_tokenizer(model) is get_tokenizer(tiny_model)
    assert scoring.letter_rule(twin) == "official"
    got = scoring.evaluate(twin, QUESTIONS, progress=False)
    want = scoring.evaluate(model, QUESTIONS, progress=False)
    assert torch.equal(got.probs, want.probs) and got.settings == want.settings
    scoring.set_letter_ids(twin, "in-context")  # the copy's own rule from now on
    assert scoring.letter_rule(model) == "official"
    assert scoring.letter_rule(tiny_model) == "in-context"


def test_a_copy_is_not_the_untouched_loaded_model(tiny_model, tmp_path):
    folder = save_model(tiny_model, tmp_path / "model")
    with score_cache.recording() as kept:
        scoring.evaluate(tiny_model, QUESTIONS, progress=False)
    score_cache.save_scores(folder, kept)
    loaded = load_model(folder, device="cpu")
    assert model_state(loaded).source is not None
    assert score_cache.cached_scores(loaded).keys() == kept.keys()
    twin = copy_model(loaded)
    assert model_state(twin).source is None and score_cache.cached_scores(twin) == {}
    with torch.no_grad():
        twin.blocks[0].mlp.W_out.mul_(2.0)  # an edited copy: its own scores, computed
    edited = scoring.evaluate(twin, QUESTIONS, progress=False).probs
    assert not torch.equal(edited, scoring.evaluate(loaded, QUESTIONS, progress=False).probs)


def test_a_plain_deep_copy_keeps_the_state(tiny_model):
    """`copy.deepcopy` carries the entry over as `copy_model` does (copyreg): the same tokenizer
    and letter-id rule, no load source, and the same scores."""
    model = copy_model(tiny_model)
    scoring.set_letter_ids(model, "official")
    plain = copy.deepcopy(model)
    assert find_state(plain) is not find_state(model)
    assert get_tokenizer(plain) is get_tokenizer(model)
    assert scoring.letter_rule(plain) == "official" and find_state(plain).source is None
    assert torch.equal(scoring.evaluate(plain, QUESTIONS, progress=False).probs,
                       scoring.evaluate(model, QUESTIONS, progress=False).probs)
    assert interp.copy_model is copy_model


def test_a_model_interp_did_not_build_has_no_state(tiny_model):
    cfg = HookedTransformerConfig(d_model=16, d_head=8, n_layers=1, n_ctx=64, act_fn="gelu",
                                  d_vocab=tiny_model.cfg.d_vocab)
    own = HookedTransformer(cfg, tokenizer=get_tokenizer(tiny_model))
    assert find_state(own) is None and get_tokenizer(own) is own.tokenizer
    assert scoring.letter_rule(own) == "in-context"
    with pytest.raises(InterpError, match="no state"):
        model_state(own)
    assert find_state(copy_model(own)) is None


@pytest.mark.parametrize("impl", ["hooks", "weights"])
def test_a_model_with_adapters_is_not_copied(tiny_model, impl):
    model = copy_model(tiny_model)
    add_lora(model, LoRAConfig(rank=2, impl=impl))
    with pytest.raises(InterpError, match="merge or remove"):
        copy_model(model)
    merge_lora(model)
    assert find_state(copy_model(model)).lora is None


def test_the_entry_goes_with_the_model(tiny_model):
    gc.collect()
    before = len(state._STATES)
    twin = copy_model(tiny_model)
    assert len(state._STATES) == before + 1
    del twin
    gc.collect()
    assert len(state._STATES) == before


def test_nested_recordings_keep_their_own_scores(tiny_model):
    with score_cache.recording() as outer:
        scoring.evaluate(tiny_model, QUESTIONS[:1], progress=False)
        with score_cache.recording() as inner:
            scoring.evaluate(tiny_model, QUESTIONS[1:], progress=False)
        assert score_cache.is_recording()
        scoring.evaluate(tiny_model, QUESTIONS[2:], progress=False)
    assert not score_cache.is_recording()
    assert len(inner) == 2 and len(outer) == 2
    assert len(inner.keys() & outer.keys()) == 1  # the last question: scored in both blocks
