"""The attacks that need no gradient (in-context examples, rephrasing, quantization) against
independent computations: the prompt written by hand, the rounded weights by hand."""

from __future__ import annotations

import einops
import pytest
import torch

from interp.attacks.icl import with_examples
from interp.attacks.quantize import GRIDS, Grid, quantize_model, quantize_rows, weight_change
from interp.attacks.rephrase import rephrased
from interp.data.questions import Question


def _q(entity, value, choices, question=None, rel="capitals"):
    return Question(question or f"The capital of {entity} is", tuple(choices),
                    choices.index(value), format="cloze",
                    meta={"relation": rel, "entity": entity, "id": f"{rel}/{entity}"})


# ------------------------------------------------------------------------------------ icl
def test_icl_prompt_by_hand():
    test = _q("Chile", "Santiago", ["Lima", "Santiago", "Quito", "Paris"],
              "The capital city of Chile is")
    pool = [_q("France", "Paris", ["Paris", "Rome", "Oslo", "Bern"]),
            _q("Peru", "Lima", ["Lima", "Rome", "Oslo", "Bern"]),
            _q("Italy", "Rome", ["Paris", "Rome", "Oslo", "Bern"]),
            _q("Chile", "Santiago", ["Santiago", "Rome", "Oslo", "Bern"])]
    q = with_examples(test, pool, 1, seed=0)
    # France (Paris is a choice), Peru (Lima is a choice) and Chile (the same entity) are out
    assert q.question == "The capital of Italy is Rome.\nThe capital city of Chile is"
    assert (q.choices, q.answer) == (test.choices, test.answer)
    assert with_examples(test, pool, 0, seed=0) is test
    with pytest.raises(Exception, match="only 1 training"):
        with_examples(test, pool, 2, seed=0)


def test_icl_examples_are_seeded_per_question():
    pool = [_q(f"E{i}", f"V{i}", [f"V{i}", "a", "b", "c"]) for i in range(20)]
    test = _q("T", "x", ["x", "y", "z", "w"])
    a, b = with_examples(test, pool, 5, seed=0), with_examples(test, pool, 5, seed=0)
    assert a.question == b.question and with_examples(test, pool, 5, seed=1).question != \
        a.question
    assert a.question.count("\n") == 5


# ------------------------------------------------------------------------------------ rephrase
def test_rephrase_by_hand():
    q = _q("Chile", "Santiago", ["Lima", "Santiago", "Quito", "Paris"],
           "The capital city of Chile is")
    assert rephrased(q, 0).question == "Q: What is the capital of Chile?\nA:"
    assert rephrased(q, 1).question == "Country: Chile\nCapital city:"
    assert (rephrased(q, 1).choices, rephrased(q, 1).answer) == (q.choices, q.answer)
    with pytest.raises(Exception, match="fact questions"):
        rephrased(Question("What?", ("a", "b", "c", "d"), 0), 0)


# ------------------------------------------------------------------------------------ quantize
def test_symmetric_per_channel_rounding_by_hand():
    w = torch.tensor([[0.7, -0.33, 0.1, 0.0], [2.0, 1.1, -0.5, 0.25]])
    got = quantize_rows(w, Grid(4))  # 4 bits symmetric: levels -7..7, scale max|row| / 7
    s0, s1 = 0.7 / 7, 2.0 / 7
    # -0.33 / s0 = -3.3 -> -3; 1.1 / s1 = 3.85 -> 4; -0.5 / s1 = -1.75 -> -2; 0.25 / s1 = 0.875 -> 1
    want = torch.tensor([[7 * s0, -3 * s0, 1 * s0, 0.0], [7 * s1, 4 * s1, -2 * s1, 1 * s1]])
    assert torch.allclose(got, want, atol=1e-7)


def test_asymmetric_groups_by_hand_and_gguf_fixed_point():
    w = torch.tensor([[0.0, 1.5, 0.2, 3.0, -1.0, -0.5, 0.5, 1.0]])
    got = quantize_rows(w, Grid(4, symmetric=False, group=4))
    d0, d1 = 3.0 / 15, 2.0 / 15  # (max - min) / 15 per group of 4
    want = torch.tensor([[0.0, round(1.5 / d0) * d0, round(0.2 / d0) * d0, 3.0,
                          -1.0, round(0.5 / d1) * d1 - 1.0, round(1.5 / d1) * d1 - 1.0, 1.0]])
    assert torch.allclose(got, want, atol=1e-6)
    # a matrix already on a Q4_1 grid (float16 scale and minimum) comes back unchanged
    g = GRIDS["q4_1-g32"]
    x = torch.randn(8, 64)
    once = quantize_rows(x, g)
    assert torch.allclose(quantize_rows(once, g), once, atol=1e-6)


def test_a_group_size_that_does_not_divide_leaves_a_shorter_last_group():
    w = torch.randn(3, 10)
    got = quantize_rows(w, Grid(4, group=4))  # groups 0-3, 4-7, and 8-9
    for lo, hi in ((0, 4), (4, 8), (8, 10)):
        assert torch.equal(got[:, lo:hi], quantize_rows(w[:, lo:hi], Grid(4)))


def test_model_rounding_groups_the_checkpoint_layout(tiny_model):
    """The rounding of a TransformerLens weight equals rounding its checkpoint-layout matrix
    (output rows, input columns): W_Q is (heads, d_model, d_head), the checkpoint's q_proj is
    (heads * d_head, d_model)."""
    from interp.model.state import copy_model

    model = copy_model(tiny_model)
    grid = Grid(4, group=16)
    w_q = model.blocks[0].attn.W_Q.detach().clone()
    w_out = model.blocks[0].mlp.W_out.detach().clone()
    quantize_model(model, grid)
    hf_q = einops.rearrange(w_q, "h i k -> (h k) i")
    want_q = einops.rearrange(quantize_rows(hf_q, grid), "(h k) i -> h i k", h=w_q.shape[0])
    assert torch.equal(model.blocks[0].attn.W_Q.detach(), want_q)
    want_out = quantize_rows(w_out.T, grid).T
    assert torch.equal(model.blocks[0].mlp.W_out.detach(), want_out)
    change, back = weight_change(tiny_model, model, tiny_model)
    assert 0 < change < 0.5 and back is None  # nothing differed from the "original"


def test_sixteen_bit_rounding_leaves_scores_unchanged(smoke_data):
    from interp.data.folder import DataFolder
    from interp.model.load import load_model
    from interp.model.state import copy_model
    from interp.scoring import evaluate

    folder, _ = smoke_data
    data = DataFolder(folder)
    model = load_model(data.model_spec, device="cpu")
    qs = data.questions("forget_test") + data.questions("control_test")
    before = evaluate(model, qs, progress=False)
    q16 = copy_model(model)
    quantize_model(q16, Grid(16))
    after = evaluate(q16, qs, progress=False)
    assert torch.equal(before.preds, after.preds)
    assert torch.allclose(before.probs, after.probs, atol=1e-3)


def test_returned_share_counts_weights_put_back(tiny_model):
    """A protection that moved weights by less than half a grid step is undone exactly by the
    rounding: the share of changed weights back at their original value is 1."""
    from interp.model.state import copy_model

    grid = Grid(8)
    original = copy_model(tiny_model)
    quantize_model(original, grid)  # an original that sits on the grid, as a GGUF one does
    protected = copy_model(original)
    with torch.no_grad():
        w = protected.blocks[0].mlp.W_in
        scale = w.abs().amax(0, keepdim=True) / 127
        # a fifth of a step, on every weight but each channel's largest (which sets the scale)
        moved = w.abs() < w.abs().amax(0, keepdim=True)
        w.add_(moved * 0.2 * scale * torch.sign(torch.randn_like(w)))
    attacked = copy_model(protected)
    quantize_model(attacked, grid)
    _, back = weight_change(protected, attacked, original)
    assert back == pytest.approx(1.0, abs=0.01)
