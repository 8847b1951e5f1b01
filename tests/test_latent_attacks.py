"""The embedding- and latent-space attacks and the fitted readouts, against independent references:
finite differences, a projection by hand, the logit lens, numpy's closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.attacks import continuous, latent, probe, readouts, soft_prompt, tuned_lens
from interp.data.questions import Question
from interp.model.hooks import hook_name, readout

QUESTIONS = [
    Question("The capital of France is", ["Paris", "Rome", "Berlin", "Madrid"], 0, "geo", "cloze"),
    Question("The capital of Italy is", ["Paris", "Rome", "Berlin", "Madrid"], 1, "geo", "cloze"),
    Question("The color of the sky is", ["green", "blue", "red", "black"], 1, "misc", "cloze"),
]


@pytest.fixture(scope="module")
def model64(tiny_llama_dir):
    from interp.model.load import load_model

    return load_model(tiny_llama_dir, device="cpu", dtype="float64")


def test_soft_prompt_gradient_matches_finite_differences(model64):
    rows = continuous.encode_rows(model64, QUESTIONS, 3)
    torch.manual_seed(0)
    prefix = (0.5 * torch.randn(3, model64.cfg.d_model, dtype=torch.float64)).requires_grad_(True)
    make = soft_prompt.prefix_hooks(prefix)
    loss = continuous.candidate_loss(model64, rows, make(rows))
    (grad,) = torch.autograd.grad(loss, prefix)

    def at(p):
        with torch.no_grad():
            return float(continuous.candidate_loss(model64, rows,
                                                   soft_prompt.prefix_hooks(p)(rows)))

    h = 1e-5
    for i, j in [(0, 0), (1, 7), (2, 33), (2, 63)]:
        up, down = prefix.detach().clone(), prefix.detach().clone()
        up[i, j] += h
        down[i, j] -= h
        numeric = (at(up) - at(down)) / (2 * h)
        assert numeric == pytest.approx(float(grad[i, j]), rel=1e-5, abs=1e-9)
    assert grad.abs().sum() > 0


def test_slot_rows_put_the_prefix_where_a_gcg_prefix_goes(tiny_model):
    from interp.attacks.gcg_tokens import question_slots
    from interp.model.state import get_tokenizer

    rows = continuous.encode_rows(tiny_model, QUESTIONS, 2)
    tok = get_tokenizer(tiny_model)
    for r, q in enumerate(QUESTIONS):
        s = question_slots(tok, q, chat=False, fmt=None)
        real = rows.tokens[r][rows.mask[r].bool()].tolist()
        pad = rows.tokens[r, rows.slot[r, 0]].item()
        assert real == s.before + [pad, pad] + s.after
        assert rows.slot[r].tolist() == [rows.tokens.shape[1] - len(real) + len(s.before) + k
                                         for k in range(2)]


def test_no_edit_scores_exactly_as_the_scorer(tiny_model):
    from interp.scoring import evaluate

    rows = continuous.encode_rows(tiny_model, QUESTIONS)
    mine = continuous.score_rows(tiny_model, rows, lambda rows: [])
    theirs = evaluate(tiny_model, QUESTIONS, progress=False)
    assert torch.allclose(mine.probs, theirs.probs, atol=1e-5)
    zero = latent.delta_hooks(1, torch.zeros(tiny_model.cfg.d_model))
    assert torch.allclose(continuous.score_rows(tiny_model, rows, zero).probs, theirs.probs,
                          atol=1e-5)


def test_latent_projection_by_hand():
    d = torch.tensor([3.0, 4.0])  # norm 5
    assert latent.project(d.clone(), 10.0).tolist() == [3.0, 4.0]  # inside: unchanged
    assert torch.allclose(latent.project(d.clone(), 2.5), torch.tensor([1.5, 2.0]))
    assert latent.after_first(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])).tolist() == \
        [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]]


def test_latent_adds_delta_after_the_first_position_within_its_bound(tiny_model):
    rows = continuous.encode_rows(tiny_model, QUESTIONS)
    layer, seen = 0, {}
    delta = torch.randn(tiny_model.cfg.d_model)

    def grab(tag):
        def fn(x, hook):
            seen[tag] = x.detach().clone()
        return fn

    with torch.no_grad():
        for tag, edit in (("plain", []), ("edited", latent.delta_hooks(layer, delta)(rows))):
            # the grab runs after the edit (hooks on one point run in order)
            with tiny_model.hooks(fwd_hooks=[*edit, (hook_name(layer), grab(tag))]):
                tiny_model(rows.tokens, attention_mask=rows.mask, stop_at_layer=layer + 1)
    diff = seen["edited"] - seen["plain"]
    want = latent.after_first(rows.mask)[..., None] * delta
    assert torch.allclose(diff, want, atol=1e-5)
    # the mean norm: by hand over the same positions
    keep = latent.after_first(rows.mask).bool()
    by_hand = float(seen["plain"][keep].norm(dim=-1).mean())
    assert latent.mean_norm(tiny_model, rows, layer) == pytest.approx(by_hand, rel=1e-5)
    cfg = latent.Config(layers=(0,), eps=(1.0,), steps=5, step_size=0.5)
    fitted = latent.pgd(tiny_model, rows, 0, 0.3, cfg)
    assert float(fitted.norm()) <= 0.3 * (1 + 1e-5) and float(fitted.norm()) > 0


def test_latent_grid_is_capped():
    from interp.errors import InterpError

    with pytest.raises(InterpError, match="capped"):
        latent.Config(layers=(1, 2, 3, 4, 5, 6))
    with pytest.raises(InterpError, match="capped"):
        latent.Config(eps=(0.1, 0.2, 0.3, 0.4, 0.5))
    assert latent.grid_layers(latent.Config(n_layers=3), 30) == [8, 15, 22]


def test_tuned_lens_at_the_identity_is_the_logit_lens(tiny_model):
    from interp.attacks.lens import LensConfig, logit_lens

    res = readouts.last_residuals(tiny_model, QUESTIONS)
    ident = tuned_lens.Translators.identity(tiny_model.cfg.n_layers, tiny_model.cfg.d_model)
    mine = readouts.candidate_logits(tiny_model, ident(res.resid), res.candidates)
    full = readout(tiny_model, res.resid)  # (L, n, vocab)
    want = full.gather(-1, res.candidates[None].expand(full.shape[0], -1, -1))
    assert torch.allclose(mine, want.float(), atol=1e-4)
    lens = logit_lens(tiny_model, QUESTIONS, LensConfig(components=("resid_post",)))
    assert torch.equal(mine.argmax(-1), lens.probs["resid_post"].argmax(-1))


def test_ridge_matches_numpy():
    rng = np.random.default_rng(0)
    h, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    ((w, b),) = tuned_lens.ridge(torch.tensor(h), torch.tensor(y), [0.7])
    hc, yc = h - h.mean(0), y - y.mean(0)
    w_np = np.linalg.solve(hc.T @ hc + 0.7 * np.eye(6), hc.T @ yc)
    assert np.allclose(w.numpy(), w_np) and np.allclose(b.numpy(), y.mean(0) - h.mean(0) @ w_np)


@pytest.mark.parametrize("n", [5, 30])  # fewer and more questions than dimensions
def test_probe_equals_numpy_closed_form(n):
    rng = np.random.default_rng(n)
    h, u = rng.normal(size=(n, 12)), rng.normal(size=(n, 12))
    got = probe.probe_delta(torch.tensor(h), torch.tensor(u), 0.3).numpy()
    want = np.linalg.solve(h.T @ h + 0.3 * np.eye(12), h.T @ (u - h))
    assert np.allclose(got, want, atol=1e-10)


def test_probe_at_zero_is_the_logit_lens_without_the_bias(tiny_model):
    res = readouts.last_residuals(tiny_model, QUESTIONS)
    x = readouts.normed(tiny_model, res.resid[1])
    got = probe.probe_logits(tiny_model, x, None, res)
    full = readout(tiny_model, res.resid[1]) - tiny_model.b_U
    assert torch.allclose(got.float(), full.gather(-1, res.candidates).float(), atol=1e-4)


def test_first_edited_layer(tiny_model):
    from interp.model.state import copy_model

    edited = copy_model(tiny_model)
    assert readouts.first_edited_layer(edited, tiny_model) == tiny_model.cfg.n_layers
    with torch.no_grad():
        edited.blocks[1].mlp.W_out.add_(0.01)
    assert readouts.first_edited_layer(edited, tiny_model) == 1
    assert readouts.first_edited_layer(edited, None) == 0
    assert readouts.choose_layer([0.9, 0.2, 0.5], 1) == 2  # the better early layer is out


def test_tuned_lens_beats_the_logit_lens_held_out(smoke_data):
    from interp.model.load import load_model

    folder, _ = smoke_data
    model = load_model(str(folder / "model"), device="cpu")
    r = tuned_lens.run(model, folder, tuned_lens.SPEC.presets["smoke"], progress=False)
    assert len(r.kl_tuned) == model.cfg.n_layers
    for layer in range(model.cfg.n_layers - 1):
        assert r.kl_tuned[layer] < r.kl_logit[layer], layer
    assert r.kl_logit[-1] == pytest.approx(0.0, abs=1e-5)
    assert r.tuned.forget[-1] == r.logit.forget[-1]  # the last layer: the model's own output


def test_continuous_attacks_do_not_hurt_the_original(smoke_data):
    from interp.attacks.sets import QuestionSets, scorer_of
    from interp.model.load import load_model

    folder, _ = smoke_data
    model = load_model(str(folder / "model"), device="cpu")
    plain = QuestionSets.load(folder).score(scorer_of(model))
    for module in (soft_prompt, latent):
        r = module.run(model, folder, module.SPEC.presets["smoke"], progress=False)
        assert r.no_attack.forget == pytest.approx(plain.forget)
        assert r.test.forget >= plain.forget, module.SPEC.name


def test_new_attacks_have_rows_with_controls(smoke_run):
    run, summary = smoke_run
    rows = [r for r in summary["rows"]]
    for attack in ("soft_prompt", "latent", "tuned_lens", "probe"):
        for model in ("rmu", "npo", "dpo"):
            splits = {r["split"] for r in rows if r["attack"] == attack and r["model"] == model}
            assert {"forget", "retain", "control"} <= splits, (attack, model)
            forget = next(r for r in rows if r["attack"] == attack and r["model"] == model
                          and r["split"] == "forget")
            assert forget["correct"] and "recovered" in forget, (attack, model)
    for placebo in ("soft_prompt-placebo", "latent-placebo"):
        assert any(r["attack"] == placebo and r["split"] == "control" for r in rows), placebo
    for attack in ("tuned_lens", "probe"):
        assert any(r["attack"] == attack and r["model"] == "original" for r in rows), attack


@pytest.mark.parametrize("name", ["soft_prompt", "latent", "tuned_lens", "probe"])
def test_cost_counts_what_the_attack_does(name, monkeypatch, tmp_path):
    """Steps taken and questions scored or read by a real run equal the module's `cost`."""
    from interp import scoring, timing
    from interp.cost import Sizes
    from interp.model.shapes import random_model
    from interp.model.state import copy_model
    from interp.pipelines import probes as plan_probes

    model = random_model("tiny", device="cpu")
    data = plan_probes.synthetic_data(model, tmp_path / "data", 60, 48, n=24)
    small = {"soft_prompt": soft_prompt.Config(n_tokens=(1, 2), steps=5, eval_every=2,
                                               batch_size=4, eval_limit=9),
             "latent": latent.Config(layers=(0, 1), eps=(0.5, 1.0), steps=3, batch_size=4,
                                     eval_limit=9),
             "tuned_lens": tuned_lens.Config(fit_tokens=64, heldout_tokens=16, max_len=16,
                                             limit=9),
             "probe": probe.Config(limit=9)}
    module = {"soft_prompt": soft_prompt, "latent": latent, "tuned_lens": tuned_lens,
              "probe": probe}[name]
    counted = {"score": 0, "readout": 0}
    real_eval, real_rows, real_last = scoring.evaluate, continuous.score_rows, \
        readouts.last_residuals

    def count_eval(m, questions, *a, **k):
        counted["score"] += len(questions)
        return real_eval(m, questions, *a, **k)

    def count_rows(m, rows, *a, **k):
        counted["score"] += len(rows)
        return real_rows(m, rows, *a, **k)

    def count_last(m, questions, **k):
        counted["readout"] += len(questions)
        return real_last(m, questions, **k)

    monkeypatch.setattr(scoring, "evaluate", count_eval)
    for target in (continuous, soft_prompt, latent):
        monkeypatch.setattr(target, "score_rows", count_rows, raising=False)
    for target in (tuned_lens, probe):
        monkeypatch.setattr(target, "last_residuals", count_last)
    texts = []
    real_corpus = tuned_lens.corpus_residuals

    def count_corpus(m, t, tokens, max_len, batch_size=16):
        out = real_corpus(m, t, tokens, max_len, batch_size)
        texts.append(-(-tokens // (max_len - 1)))
        return out

    monkeypatch.setattr(tuned_lens, "corpus_residuals", count_corpus)
    original = copy_model(model)
    with torch.no_grad():
        for p in original.parameters():
            p.add_(0.05 * torch.randn_like(p))
    n = {s: len(data.questions(s)) for s in ("forget_train", "forget_test", "retain_train",
                                              "retain_test", "forget_val", "retain_val")}
    sizes = Sizes(**n, unrelated=len(data.corpus("unrelated")), n_layers=model.cfg.n_layers)
    with timing.step_times() as steps:
        module.run(copy_model(model), data, small[name], original=original, progress=False)
    expected = module.cost(small[name], sizes)
    if name in ("soft_prompt", "latent"):
        assert len(steps) == expected[name]
        assert counted["score"] == expected["score"]
    else:
        assert counted["readout"] + sum(texts) == expected["readout"]
