"""The protected model's kept scores: served only for the untouched model it was made with, and
equal to a fresh computation."""

from __future__ import annotations

import os

import pytest
import torch

from interp import score_cache, scoring
from interp.data.questions import Question
from interp.model.load import load_model, save_model
from interp.model.lora import LoRAConfig, lora_adapters
from interp.model.state import set_state

QUESTIONS = [
    Question("The capital of France is", ("Paris", "Rome", "Oslo", "Lima"), 0, format="cloze"),
    Question("The capital of Peru is", ("Paris", "Rome", "Oslo", "Lima"), 3, format="cloze"),
    Question("Which is a planet?", ("Mars", "Moon", "Sun", "Comet"), 0),
    Question("Two plus two is", ("three", "four", "five", "six"), 1, format="cloze"),
]


@pytest.fixture()
def kept_folder(tiny_model, tmp_path):
    """A saved model whose scores on QUESTIONS[:3] (raw) were kept, as `protect` keeps them."""
    folder = tmp_path / "model"
    save_model(tiny_model, folder)
    with score_cache.recording() as rec:
        scoring.evaluate(tiny_model, QUESTIONS[:3], progress=False)
    score_cache.save_scores(folder, rec)
    return folder


@pytest.fixture()
def forwards(monkeypatch):
    """Counts the questions that reach a forward pass."""
    seen = []
    real = scoring.last_logits

    def counting(model, tokens, mask):
        seen.append(tokens.shape[0])
        return real(model, tokens, mask)
    monkeypatch.setattr(scoring, "last_logits", counting)
    return seen


def _fresh(model, questions, **kw):
    set_state(model, source=None)  # no cache: the reference computation
    return scoring.evaluate(model, questions, progress=False, **kw).probs


def test_kept_scores_serve_the_untouched_model(kept_folder, forwards):
    model = load_model(kept_folder, device="cpu")
    got = scoring.evaluate(model, QUESTIONS, progress=False)
    assert sum(forwards) == 1  # only the question that was not kept was computed
    torch.testing.assert_close(got.probs, _fresh(model, QUESTIONS), atol=1e-6, rtol=1e-5)


def test_kept_scores_are_not_used_once_the_model_changes(kept_folder, forwards):
    model = load_model(kept_folder, device="cpu")
    kept = scoring.evaluate(model, QUESTIONS[:3], progress=False).probs
    assert sum(forwards) == 0

    # hooks given to evaluate, hooks added to the model, adapters, another mode: computed
    scoring.evaluate(model, QUESTIONS[:3], progress=False,
                     hooks=[("blocks.0.hook_resid_post", lambda x, hook: x)])
    model.blocks[0].hook_resid_post.add_hook(lambda x, hook: x)
    scoring.evaluate(model, QUESTIONS[:3], progress=False)
    model.reset_hooks()
    with lora_adapters(model, LoRAConfig(rank=2)):
        scoring.evaluate(model, QUESTIONS[:3], progress=False)
    scoring.evaluate(model, QUESTIONS[:3], progress=False, chat=True)
    assert sum(forwards) == 4 * 3
    forwards.clear()
    scoring.evaluate(model, QUESTIONS[:3], progress=False)  # untouched again: served
    assert sum(forwards) == 0

    # an in-place edit of a weight: computed, and the scores move with it
    with torch.no_grad():
        model.blocks[1].mlp.W_out.mul_(3.0)
    edited = scoring.evaluate(model, QUESTIONS[:3], progress=False).probs
    assert sum(forwards) == 3
    torch.testing.assert_close(edited, _fresh(model, QUESTIONS[:3]))
    assert not torch.allclose(edited, kept)

    # a replaced tensor (not in place) is seen too
    model = load_model(kept_folder, device="cpu")
    model.blocks[1].mlp.W_out.data = model.blocks[1].mlp.W_out.data * 3.0
    forwards.clear()
    scoring.evaluate(model, QUESTIONS[:3], progress=False)
    assert sum(forwards) == 3


def test_kept_scores_belong_to_one_weights_file(kept_folder, forwards):
    weights = kept_folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    model = load_model(kept_folder, device="cpu")
    scoring.evaluate(model, QUESTIONS[:3], progress=False)
    assert sum(forwards) == 3  # the weights file changed since the scores were kept
