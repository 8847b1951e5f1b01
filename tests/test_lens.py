"""The logit lens: its last layer is the model's own output."""

from __future__ import annotations

import torch

from interp.attacks.lens import LensConfig, logit_lens
from interp.data.questions import load_questions
from interp.scoring import evaluate


def test_last_layer_lens_equals_model_output(tiny_model, wmdp_jsonl):
    questions = load_questions(wmdp_jsonl, subject="biology")
    lens = logit_lens(tiny_model, questions, LensConfig(batch_size=2))
    last = lens.probs["resid_post"][-1]  # (n, 4), full-vocabulary probabilities
    # the same four probabilities from the model's own logits
    from interp.scoring import EvalConfig, encode_all

    for i, enc in enumerate(encode_all(tiny_model, questions, EvalConfig())):
        with torch.no_grad():
            probs = tiny_model(torch.tensor([enc.ids]))[0, -1].softmax(-1)
        torch.testing.assert_close(last[i], probs[list(enc.candidates)], atol=1e-6, rtol=1e-4)
    # renormalised over the four candidates it is the scorer's answer
    scored = evaluate(tiny_model, questions, progress=False)
    torch.testing.assert_close(last / last.sum(-1, keepdim=True), scored.probs, atol=1e-5,
                               rtol=1e-4)
    assert lens.accuracy()[-1] == scored.accuracy
    assert len(lens.accuracy("mlp_out")) == tiny_model.cfg.n_layers
    assert all(0 < m <= 1 for m in lens.mass())
