"""The paper-scale tokenizer's traps, on a SentencePiece-style tokenizer as Zephyr's runs
(`zephyr_sp_tokenizer`: " A" alone is ["▁", "▁A"], "Answer: A" ends in "▁A") beside the embedded
byte-level BPE: trained and attacked sequences are tokenized in context, the official scorer's
letter ids, and lengths that never leave a NaN or a silent empty batch."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from interp.attacks.gcg import question_slots
from interp.data.questions import Question
from interp.errors import InterpError
from interp.model.load import get_tokenizer, load_model
from interp.model.state import set_state
from interp.prompts import chat_text, encode_question, letter_prompt
from interp.protections.common import encode_pair, encode_pairs
from interp.scoring import evaluate, set_letter_ids

from .conftest import WMDP_ROWS

QS = [Question(question=r["question"], choices=r["choices"], answer=r["answer"],
               subject="biology") for r in WMDP_ROWS]


@pytest.fixture(params=["sentencepiece", "byte-bpe"])
def tok(request, zephyr_sp_tokenizer, bpe_tokenizer):
    return zephyr_sp_tokenizer if request.param == "sentencepiece" else bpe_tokenizer


def _holder(tokenizer):
    holder = nn.Module()  # a stand-in model: encode_pair reads only its tokenizer
    set_state(holder, tokenizer=tokenizer)
    return holder


def test_the_fixture_has_zephyrs_trap(zephyr_sp_tokenizer):
    t = zephyr_sp_tokenizer
    pieces = lambda s: t.convert_ids_to_tokens(t(s, add_special_tokens=False).input_ids)  # noqa: E731
    assert pieces(" A") == ["▁", "▁A"] and pieces("Answer: A")[-1] == "▁A"
    assert pieces("A") == ["▁A"]
    assert "<0xC3>" in pieces("Zürich")  # byte fallback


@pytest.mark.parametrize("chat", [False, True])
def test_pairs_are_tokenized_as_one_text(tok, chat):
    """The trained ids are the tokenization of the whole text (what the scorer reads); before,
    the response was tokenized alone and under SentencePiece gained a "▁" token."""
    prompt, response = letter_prompt(QS[1]), "B. Copies DNA"
    ids, first = encode_pair(_holder(tok), prompt, response, chat=chat, max_len=10_000)
    if chat:
        whole = tok(chat_text(tok, prompt) + response + tok.eos_token,
                    add_special_tokens=False)["input_ids"]
    else:
        whole = tok(prompt + " " + response)["input_ids"]
    assert ids == whole
    assert tok.decode(ids[first:]).strip().startswith("B. Copies")
    context = tok(chat_text(tok, prompt), add_special_tokens=False)["input_ids"] if chat else \
        tok(prompt)["input_ids"]
    assert ids[:first] == context[:first] and first >= len(context) - 1
    alone = tok(("" if chat else " ") + response, add_special_tokens=False)["input_ids"]
    if tok.convert_ids_to_tokens(alone)[0] == "▁":  # the old way: a token the scorer never sees
        assert ids[first:first + len(alone)] != alone


@pytest.mark.parametrize("chat", [False, True])
def test_gcg_text_after_the_prefix_is_tokenized_in_context(tok, chat):
    prefix_ids = tok("Paris Madrid", add_special_tokens=False)["input_ids"]
    prefix = tok.decode(prefix_ids)
    for q in QS:
        s = question_slots(tok, q, chat=chat, fmt="letter")
        joint = encode_question(tok, q, chat=chat, prefix=prefix, fmt="letter").ids
        assert joint[-len(s.after):] == s.after and joint[:len(s.before)] == s.before
        if not chat:  # raw mode: the whole sequence is exactly what the scorer reads
            assert s.before + prefix_ids + s.after == joint


def test_letter_ids_official_and_in_context(zephyr_sp_tokenizer, bpe_tokenizer):
    q = QS[0]
    sp, bpe = zephyr_sp_tokenizer, bpe_tokenizer
    pieces = lambda t, ids: t.convert_ids_to_tokens(list(ids))  # noqa: E731
    for chat in (False, True):  # the official rule: the bare letter's last id, in both modes
        assert pieces(sp, encode_question(sp, q, chat=chat, letter_ids="official").candidates) \
            == ["▁A", "▁B", "▁C", "▁D"]
        assert [bpe.decode([i]) for i in encode_question(bpe, q, chat=chat,
                                                         letter_ids="official").candidates] \
            == list("ABCD")
    # in context: Zephyr's assistant turn begins with "A" (no "▁"); raw text has "▁A" after
    # "Answer:"; the byte-level BPE reads " A" after "Answer:" and "A" in a chat turn
    assert pieces(sp, encode_question(sp, q, chat=True).candidates)[0] in ("A", "<0x41>")
    assert pieces(sp, encode_question(sp, q, chat=False).candidates) == ["▁A", "▁B", "▁C", "▁D"]
    assert bpe.decode([encode_question(bpe, q, chat=False).candidates[0]]) == " A"
    assert bpe.decode([encode_question(bpe, q, chat=True).candidates[0]]) == "A"
    with pytest.raises(InterpError, match="letter-id rule"):
        encode_question(sp, q, chat=False, letter_ids="paper")


@pytest.mark.parametrize("chat", [False, True])
def test_scores_with_official_letter_ids_match_the_logits(tiny_zephyr, tiny_zephyr_dir, chat):
    """Probabilities = softmax over the HF model's last logits at the official ids."""
    from transformers import AutoModelForCausalLM

    tok = get_tokenizer(tiny_zephyr)
    hf = AutoModelForCausalLM.from_pretrained(tiny_zephyr_dir).eval()
    res = evaluate(tiny_zephyr, QS, chat=chat, fmt="letter", letter_ids="official",
                   progress=False)
    assert res.settings["letter_ids"] == "official"
    official = [tok(x, add_special_tokens=False)["input_ids"][-1] for x in "ABCD"]
    for i, q in enumerate(QS):
        ids = encode_question(tok, q, chat=chat, fmt="letter").ids
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1]
        torch.testing.assert_close(res.probs[i], logits[official].softmax(-1), atol=1e-5,
                                   rtol=1e-4)
    default = evaluate(tiny_zephyr, QS, chat=chat, fmt="letter", progress=False)
    assert default.settings["letter_ids"] == "in-context"
    if chat:  # "A" vs "▁A": different candidates, different numbers
        assert not torch.allclose(default.probs, res.probs)
    try:  # the rule set on the model is what every later score uses
        set_letter_ids(tiny_zephyr, "official")
        again = evaluate(tiny_zephyr, QS, chat=chat, fmt="letter", progress=False)
        torch.testing.assert_close(again.probs, res.probs)
    finally:
        set_letter_ids(tiny_zephyr, "in-context")


def test_load_model_and_cli_take_the_letter_rule(tiny_zephyr_dir, wmdp_jsonl, tmp_path):
    from interp.cli import main

    model = load_model(tiny_zephyr_dir, device="cpu", letter_ids="official")
    assert evaluate(model, QS, fmt="letter", progress=False).settings["letter_ids"] == "official"
    with pytest.raises(InterpError, match="letter-id rule"):
        load_model(tiny_zephyr_dir, device="cpu", letter_ids="bare")
    out = tmp_path / "res.json"
    assert main(["eval", "--model", str(tiny_zephyr_dir), "--data", str(wmdp_jsonl),
                 "--subject", "biology", "--out", str(out), "--device", "cpu", "--chat",
                 "--letter-ids", "official"]) == 0
    assert json.loads(out.read_text())["letter_ids"] == "official"


def test_encode_pairs_counts_and_refuses_what_cannot_train(tiny_zephyr):
    rows = [(letter_prompt(q) * 8, q.choices[q.answer], chat) for q in QS
            for chat in (False, True)]
    out, enc = encode_pairs(tiny_zephyr, rows, max_len=40, what="test")
    assert enc.rows == enc.kept == 6 and enc.truncated == 6 and enc.dropped == 0
    assert all(len(ids) <= 40 and first < len(ids) for ids, first in out)
    _, enc = encode_pairs(tiny_zephyr, rows, max_len=4096, what="test")
    assert enc.truncated == 0
    with pytest.raises(InterpError, match="max_len"):
        encode_pair(tiny_zephyr, "q", "a", chat=False, max_len=1)


def test_a_batch_with_nothing_to_train_is_an_error_not_a_nan(tiny_zephyr):
    from interp.training import lm_loss, pack

    batch = pack([[1, 5, 6, 7]], [4], 0, "cpu")  # the response starts past the end
    with pytest.raises(InterpError, match="no target token"):
        lm_loss(tiny_zephyr, batch)


@pytest.mark.parametrize("method", ["npo", "dpo"])
def test_npo_and_dpo_use_their_max_len(method, smoke_data, tmp_path):
    """Both used encode_pair's default of 160 tokens whatever their config said."""
    from dataclasses import replace

    from interp.data.folder import DataFolder
    from interp.pipelines.presets import PRESETS
    from interp.protections.base import get

    folder, _ = smoke_data
    model = load_model(folder / "model", device="cpu")
    module = get(method)
    cfg = replace(PRESETS["smoke"].protections[method], steps=1, max_len=12)
    _, extras = module.train(model, DataFolder(folder), cfg, progress=False)
    encs = extras["encoding"].values() if method == "npo" else [extras["encoding"]]
    for enc in encs:
        assert enc["max_len"] == 12 and enc["truncated"] > 0 and enc["kept"] > 0


@pytest.mark.parametrize("loss_on,reduction", [("all", "sum"), ("response", "mean")])
def test_npo_official_loss_options_by_hand(loss_on, reduction, smoke_data):
    """At the first step (lr 0: the model is its own reference) the NPO term is exactly
    (2 / beta) ln 2; the retain term is the per-sequence summed NLL ("sum") or the per-token mean,
    over the prompt too when loss_on="all"."""
    import math

    from interp.data.folder import DataFolder
    from interp.protections import npo
    from interp.training import lm_loss, pack, sample_indices, sequence_nll

    folder, _ = smoke_data
    model = load_model(folder / "model", device="cpu")
    data = DataFolder(folder)
    cfg = npo.Config(steps=1, lr=0.0, beta=0.2, retain_weight=2.0, batch_size=4,
                     loss_on=loss_on, retain_reduction=reduction, max_len=64)
    losses, _ = npo.train(model, data, cfg, progress=False)
    rows = data.preference()
    retain, _ = encode_pairs(model, [(r["prompt"], r["chosen"], chat) for r in rows
                                     if r["split"] == "retain" for chat in (False, True)],
                             max_len=64, what="retain")
    retain = [x for x in retain if x]
    if loss_on == "all":
        retain = [(ids, 0) for ids, _ in retain]
    ri = sample_indices(len(retain), 4, 0, 0, 1000)
    batch = pack([retain[i][0] for i in ri], [retain[i][1] for i in ri], 0, "cpu")
    with torch.no_grad():
        r = sequence_nll(model, batch).mean() if reduction == "sum" else lm_loss(model, batch)
    assert losses[0] == pytest.approx(2 / 0.2 * math.log(2) + 2.0 * float(r), rel=1e-4)
    with pytest.raises(InterpError, match="loss_on"):
        npo.Config(loss_on="prompt")


def test_finetune_recipe_options(zephyr_sp_tokenizer, smoke_data, monkeypatch):
    """The system prompt opens the conversation; weight decay reaches the optimizer's settings;
    loss_on="all" counts the prompt's tokens too, "response" only the answer's."""
    from interp.attacks import finetune
    from interp.training import train as real_train

    ids, first = encode_pair(_holder(zephyr_sp_tokenizer), "Write.", "Text.", chat=True,
                             max_len=512, system="You are a helpful assistant.")
    head = zephyr_sp_tokenizer.decode(ids[:first])
    assert head.startswith("<|system|>\nYou are a helpful assistant.</s>")
    with pytest.raises(InterpError, match="loss_on"):
        finetune.Config(loss_on="everything")

    folder, _ = smoke_data
    model = load_model(folder / "model", device="cpu")
    seen = []

    def spy(params, loss_fn, batch_at, cfg, **kw):
        seen.append((cfg, batch_at(0, 0)))
        return real_train(params, loss_fn, batch_at, cfg, **kw)

    monkeypatch.setattr(finetune, "train", spy)
    for loss_on in ("all", "response"):
        cfg = finetune.Config(unrelated_n=(2,), forget_k=(), eval_limit=4, epochs=1,
                              weight_decay=0.01, loss_on=loss_on, curve_points=2,
                              lora=finetune.LoRAConfig(rank=2))
        finetune.run(model, folder, cfg, progress=False)
    (cfg_all, b_all), (cfg_resp, b_resp) = seen
    assert cfg_all.weight_decay == cfg_resp.weight_decay == 0.01
    assert bool(b_all.loss_mask[:, 0].all())  # the first prediction already counts
    assert not bool(b_resp.loss_mask[:, 0].any())  # the prompt does not
    assert int(b_all.loss_mask.sum()) > int(b_resp.loss_mask.sum())
