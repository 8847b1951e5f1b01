"""The activation iterator against a plain `run_with_cache` of each prompt alone, unpadded."""

from __future__ import annotations

import pytest
import torch

from interp.activations import iter_activations, position_mask
from interp.data.questions import Question
from interp.errors import InterpError
from interp.model.hooks import layer_hook_names
from interp.model.load import get_tokenizer
from interp.padding import pad_id
from interp.scoring import EvalConfig, encode_all

TEXTS = ["Paris is big.", "The capital of France is Paris.", "Rome is the capital of Italy, yes.",
         "The capital of Japan is Tokyo, a big and very old city by the sea.",
         "Gold has the symbol Au.", "A dolphin is a mammal that lives in the sea and breathes air."]


def _alone(model, ids: list[int], names: list[str]) -> torch.Tensor:
    """(names, p, d): every position of one prompt run alone, without padding or mask."""
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=names)
    return torch.stack([cache[n][0] for n in names])


@pytest.mark.parametrize("batch_size", [1, 2, 4])
@pytest.mark.parametrize("positions, skip", [("last", 0), ("all", 0), ("all", 2), (3, 0)])
def test_batches_equal_each_prompt_alone(tiny_model, batch_size, positions, skip):
    tok = get_tokenizer(tiny_model)
    ids = [tok(t)["input_ids"] for t in TEXTS]
    assert len({len(i) for i in ids}) == len(ids)  # every length differs: left padding shows
    names = layer_hook_names(tiny_model, "resid_post") + ["blocks.1.hook_attn_out"]
    batches = list(iter_activations(tiny_model, TEXTS, names, batch_size=batch_size,
                                    positions=positions, skip_first=skip))
    assert [b.rows for b in batches] == [range(s, min(s + batch_size, len(TEXTS)))
                                         for s in range(0, len(TEXTS), batch_size)]
    got, got_ids = [], []
    for b in batches:
        assert b.acts.shape == (len(names), int(b.keep.sum()), tiny_model.cfg.d_model)
        assert b.tokens.shape == b.mask.shape == b.keep.shape
        assert (b.tokens[b.mask == 0] == pad_id(tiny_model)).all()
        assert (b.mask.flip(-1).cumprod(-1).sum(-1) == b.mask.sum(-1)).all()  # left padded
        got.append(b.acts)
        got_ids += b.ids.tolist()
    ref, ref_ids = [], []
    for i in ids:
        keep = {"last": slice(-1, None), "all": slice(skip, None), 3: slice(-3, None)}[positions]
        ref.append(_alone(tiny_model, i, names)[:, keep])
        ref_ids += i[keep]
    assert got_ids == ref_ids
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(ref, 1), atol=1e-5, rtol=1e-5)


def test_questions_are_read_as_the_scorer_reads_them(tiny_model):
    qs = [Question("The capital of France is", ("Paris", "Rome", "Oslo", "Lima"), 0,
                   format="cloze"),
          Question("What does DNA polymerase do?", ("Cuts", "Copies", "Folds", "Makes"), 1,
                   subject="biology", format="letter")]
    names = ["blocks.0.hook_resid_post"]
    for chat in (False, True):
        encoded = encode_all(tiny_model, qs, EvalConfig(chat=chat))
        (batch,) = iter_activations(tiny_model, qs, names, chat=chat, batch_size=2)
        ref = torch.cat([_alone(tiny_model, e.ids, names)[:, -1:] for e in encoded], 1)
        torch.testing.assert_close(batch.acts, ref, atol=1e-5, rtol=1e-5)
    # questions, texts and ids mixed: each as itself
    ids = get_tokenizer(tiny_model)(TEXTS[1])["input_ids"]
    (mixed,) = iter_activations(tiny_model, [qs[0], TEXTS[1], ids], names, batch_size=3)
    raw = encode_all(tiny_model, qs[:1], EvalConfig())[0].ids
    assert mixed.tokens[1].tolist() == mixed.tokens[2].tolist()
    assert mixed.tokens[0, -len(raw):].tolist() == raw and mixed.mask[0].sum() == len(raw)


def test_no_grad_and_bad_positions(tiny_model):
    (batch,) = iter_activations(tiny_model, TEXTS[:2], ["blocks.0.hook_resid_post"])
    assert not batch.acts.requires_grad
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert position_mask(mask, "all", 1).tolist() == [[False, False, True], [False, True, True]]
    for bad in ("first", 0, True):
        with pytest.raises(InterpError):
            position_mask(mask, bad)
    with pytest.raises(InterpError):
        list(iter_activations(tiny_model, TEXTS, ["blocks.0.hook_resid_post"], batch_size=0))
