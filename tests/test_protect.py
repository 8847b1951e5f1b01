"""Protections at smoke scale: each hides the forget facts and keeps the retain facts."""

from __future__ import annotations

import pytest
import torch

from interp.model.load import load_model
from interp.pipelines.presets import PRESETS
from interp.pipelines.protect import protect
from interp.protections.dpo import dpo_loss
from interp.protections.npo import npo_loss


def test_npo_loss_by_hand():
    nll = torch.tensor([2.0, 5.0])
    ref = torch.tensor([3.0, 1.0])
    beta = 0.5
    expected = -(2 / beta) * torch.log(torch.sigmoid(beta * (nll - ref))).mean()
    torch.testing.assert_close(npo_loss(nll, ref, beta), expected)


def test_dpo_loss_by_hand():
    pc, pr, rc, rr = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                      torch.tensor([-2.5]))
    margin = (-1.0 - -2.0) - (-3.0 - -2.5)
    torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, 0.2),
                               -torch.log(torch.sigmoid(torch.tensor([0.2 * margin]))).mean())


@pytest.fixture(scope="module")
def protected(smoke_protected):
    return smoke_protected


@pytest.mark.parametrize("method", ["rmu", "npo", "dpo"])
def test_protection_hides_forget_keeps_retain(protected, method):
    _, _, reports = protected
    r = reports[method]
    assert r.before["forget/cloze/raw"].accuracy == 1.0  # the filtered sets
    # hidden beyond noise: the 95% interval after protection lies well below the 100% before
    # (the test split is 20 questions of 12 entities; RMU, NPO, DPO reached 35%, 40%, 45%)
    from interp.stats import wilson

    after = r.after["forget/cloze/raw"]
    assert wilson(after.accuracy, after.n)[1] < 0.7
    retain_drop = r.before["retain/cloze/raw"].accuracy - r.after["retain/cloze/raw"].accuracy
    assert retain_drop <= 0.10


def test_protected_model_reloads_with_same_scores(protected):
    from interp.data.questions import load_questions
    from interp.scoring import evaluate

    folder, out, reports = protected
    model = load_model(out / "rmu", device="cpu")
    acc = evaluate(model, load_questions(folder / "forget_test.jsonl"), progress=False).accuracy
    assert acc == pytest.approx(reports["rmu"].after["forget/cloze/raw"].accuracy)


def test_rmu_only_touches_mlp_out_of_its_layers(protected):
    folder, out, reports = protected
    original = load_model(folder / "model", device="cpu")
    rmu = load_model(out / "rmu", device="cpu")
    layer = reports["rmu"].layer
    changed = {n for (n, a), (_, b) in zip(original.named_parameters(), rmu.named_parameters())
               if not torch.equal(a, b)}
    allowed = {f"blocks.{i}.mlp.W_out" for i in range(max(0, layer - 2), layer + 1)}
    assert changed and changed <= allowed


def test_protections_change_the_model(protected):
    _, _, reports = protected
    for method in ("rmu", "npo", "dpo"):
        assert (reports[method].after["forget/cloze/raw"].accuracy
                < reports[method].before["forget/cloze/raw"].accuracy)


def test_dpo_refuses_in_chat(protected):
    _, _, reports = protected
    # the test split's forget prompts (20): refusals are the majority, beyond noise
    from interp.stats import wilson

    refusal = reports["dpo"].refusal
    assert wilson(refusal["refusal_rate"], refusal["n"])[0] > 0.4


def test_finished_protection_is_not_retrained(protected, smoke_data):
    folder, _ = smoke_data
    _, out, reports = protected
    again = protect("rmu", str(folder / "model"), folder, out / "rmu",
                    PRESETS["smoke"].protections["rmu"], preset="smoke", device="cpu",
                    progress=False)
    assert again == reports["rmu"]


def test_dpo_batches_mix_forget_pairs_at_the_asked_share():
    from interp.protections.dpo import mixed_indices

    draws = [i for step in range(400) for i in mixed_indices(100, 30, 8, 0.5, 0, step)]
    share = sum(i < 30 for i in draws) / len(draws)
    assert abs(share - 0.5) < 0.05 and all(0 <= i < 100 for i in draws)
    assert mixed_indices(100, 30, 8, 0.5, 0, 7) == mixed_indices(100, 30, 8, 0.5, 0, 7)
    assert {i for i in mixed_indices(100, 30, 64, 1.0, 0, 1)} <= set(range(30))
    uniform = [i for step in range(400) for i in mixed_indices(100, 30, 8, None, 0, step)]
    assert abs(sum(i < 30 for i in uniform) / len(uniform) - 0.3) < 0.05


def test_dpo_sft_term_by_hand():
    from interp.protections.dpo import chosen_nll

    logp = torch.tensor([-6.0, -2.0])  # summed log-probs of two chosen responses
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])  # 3 and 2 counted tokens
    torch.testing.assert_close(chosen_nll(logp, mask), torch.tensor((6.0 / 3 + 2.0 / 2) / 2))


@pytest.mark.parametrize("chat", [False, True])
def test_long_prompts_keep_their_answer(tiny_model, chat):
    """A prompt longer than max_len loses its start, not the answer (before: cut from the right,
    the pair trained nothing and a SNIP batch of such rows gave a NaN loss)."""
    from interp.model.load import get_tokenizer
    from interp.protections.common import encode_pair

    tok = get_tokenizer(tiny_model)
    prompt = "Which of these enzymes cuts DNA at a palindromic site? " * 20
    full, first_full = encode_pair(tiny_model, prompt, "Eco RI", chat=chat, max_len=10_000)
    answer = full[first_full:]
    ids, first = encode_pair(tiny_model, prompt, "Eco RI", chat=chat, max_len=48)
    assert len(full) > 48 and len(ids) == 48
    assert ids[first:] == answer and ids == full[-48:]  # the prompt lost its start
    assert tok.decode(ids[first:]).strip().startswith("Eco RI")
    short, first_short = encode_pair(tiny_model, "What cuts DNA?", "Eco RI", chat=chat,
                                     max_len=48)
    assert len(short) < 48 and short == encode_pair(tiny_model, "What cuts DNA?", "Eco RI",
                                                    chat=chat, max_len=10_000)[0]
    # a long response is cut from the right once it has half the budget
    long_answer = " ".join(["EcoRI"] * 60)
    ids, first = encode_pair(tiny_model, "What cuts DNA?", long_answer, chat=chat, max_len=48)
    assert len(ids) == 48 and first == first_short


def test_reference_nll_of_the_drawn_rows_batched_by_length(tiny_model):
    """NPO / DPO's reference pass: each listed sequence's summed NLL equals the sequence scored
    alone (right padding: its real positions never read a pad), the others are NaN."""
    import math

    import torch

    from interp.training import pack, sequence_nll, sequence_nll_of

    seqs = [([5, 6, 7, 8, 9, 10, 11, 12], 3), ([13, 14, 15], 1), ([16, 17, 18, 19, 20], 2),
            ([21, 22, 23, 24, 25, 26], 4), ([27, 28], 1)]
    got = sequence_nll_of(tiny_model, seqs, [0, 2, 3, 2, 4], "cpu", batch_size=2)
    for i, (ids, first) in enumerate(seqs):
        if i == 1:
            assert math.isnan(float(got[i]))
            continue
        with torch.no_grad():
            alone = sequence_nll(tiny_model, pack([ids], [first], 0, "cpu"))[0]
        torch.testing.assert_close(got[i], alone, atol=1e-5, rtol=1e-5)
