"""SNIP scores and set-difference pruning against hand computations."""

from __future__ import annotations

import pytest
import torch

from interp.attacks.prune import (
    Thresholds,
    grid_mask,
    neuron_scores,
    neuron_set_difference,
    neuron_weight_masks,
    pruned,
    set_difference,
    snip_scores,
    top_mask,
)
from interp.errors import InterpError
from interp.model.hooks import block_weight_names
from interp.model.load import get_tokenizer
from interp.model.state import copy_model
from interp.training import lm_loss, pack

TEXTS = ["The capital of France is Paris.", "Gold has the symbol Au and is a metal.",
         "A dolphin is a mammal that lives in the sea.", "Hot is the opposite of cold."]


def _batches(model, texts, size=2):
    tok = get_tokenizer(model)
    seqs = [tok(t)["input_ids"] for t in texts]
    return [pack(seqs[i:i + size], [3] * len(seqs[i:i + size]), 0, "cpu")
            for i in range(0, len(seqs), size)]


def test_snip_equals_finite_differences(tiny_model):
    """|w| * sum_b |dL_b/dw| against central differences in float64, for each kind of matrix."""
    model = copy_model(tiny_model).to(torch.float64)
    model.cfg.dtype = torch.float64
    batches = _batches(model, TEXTS)
    scores = snip_scores(model, batches)
    params = dict(model.named_parameters())
    names = block_weight_names(model)
    kinds = {n.split(".")[-1] for n in names}
    assert {"W_Q", "W_O", "W_in", "W_out"} <= kinds | {k.lstrip("_") for k in kinds}
    eps = 1e-6
    for name in names[: len(names) // 2 + 1]:  # every matrix of the first block
        flat_scores = scores[name].reshape(-1)
        for idx in (int(flat_scores.argmax()), 7):
            p = params[name]
            at = tuple(int(i) for i in torch.unravel_index(torch.tensor(idx), p.shape))
            w = p.detach()[at].item()
            total = 0.0
            for batch in batches:
                with torch.no_grad():
                    p[at] = w + eps
                    up = lm_loss(model, batch).item()
                    p[at] = w - eps
                    down = lm_loss(model, batch).item()
                    p[at] = w
                total += abs((up - down) / (2 * eps))
            expected = abs(w) * total
            assert flat_scores[idx].item() == pytest.approx(expected, rel=1e-4, abs=1e-9), name
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_set_difference_by_hand():
    forget = torch.tensor([[9.0, 8.0, 7.0, 1.0, 0.5], [6.0, 0.1, 0.2, 0.3, 5.0]])
    utility = torch.tensor([[0.1, 9.0, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8, 8.0]])
    # top 30% of the 10 forget entries: 9, 8, 7 at (0,0) (0,1) (0,2);
    # top 30% utility: 9, 8, 0.8 at (0,1) (1,4) (1,3) -> keep (0,0) and (0,2)
    expected = torch.tensor([[True, False, True, False, False], [False] * 5])
    assert torch.equal(set_difference(forget, utility, q=0.3, p=0.3), expected)
    assert int(top_mask(forget, 0.3).sum()) == 3
    # the grid's thresholds give the same mask as exact top-k (no ties here)
    th_f, th_u = Thresholds.of({"w": forget}, [0.3]), Thresholds.of({"w": utility}, [0.3])
    assert torch.equal(grid_mask(forget, utility, th_f.values["w"][0.3], th_u.values["w"][0.3]),
                       expected)


@pytest.mark.parametrize("q,p", [(0.2, 0.1), (0.0, 0.1), (0.1, 1.5), (float("nan"), 0.5)])
def test_bad_fractions_refused(q, p):
    with pytest.raises(InterpError, match="prun"):
        set_difference(torch.ones(4), torch.ones(4), q, p)


def test_neuron_scores_and_masks(tiny_model):
    model = tiny_model
    d_mlp = model.cfg.d_mlp
    scores = {n: torch.rand_like(p) for n, p in model.named_parameters() if n in
              block_weight_names(model)}
    ns = neuron_scores(model, scores)
    i = 5
    by_hand = (scores["blocks.1.mlp.W_in"][:, i].sum() + scores["blocks.1.mlp.W_gate"][:, i].sum()
               + scores["blocks.1.mlp.W_out"][i].sum())
    assert ns.shape == (model.cfg.n_layers, d_mlp)
    assert ns[1, i].item() == pytest.approx(by_hand.item(), rel=1e-6)
    neurons = neuron_set_difference(ns, -ns, 0.1, 0.1)  # disjoint tops
    assert int(neurons[0].sum()) == round(0.1 * d_mlp)
    masks = neuron_weight_masks(model, neurons)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pruned(model, masks):
        w_out = model.blocks[0].mlp.W_out
        chosen = neurons[0].nonzero()[:, 0]
        assert (w_out[chosen] == 0).all() and (model.blocks[0].mlp.W_in[:, chosen] == 0).all()
        others = (~neurons[0]).nonzero()[:, 0]
        assert torch.equal(w_out[others], before["blocks.0.mlp.W_out"][others])
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_pruned_restores_weights_after_an_error(tiny_model):
    before = tiny_model.blocks[0].attn.W_O.detach().clone()
    mask = torch.ones_like(before, dtype=torch.bool)
    with pytest.raises(RuntimeError):
        with pruned(tiny_model, {"blocks.0.attn.W_O": mask}):
            assert (tiny_model.blocks[0].attn.W_O == 0).all()
            raise RuntimeError("boom")
    assert torch.equal(tiny_model.blocks[0].attn.W_O, before)


def test_pruning_a_weight_equals_zeroing_it_by_hand(tiny_model, bpe_tokenizer):
    batch = _batches(tiny_model, TEXTS[:2])[0]
    mask = torch.zeros_like(tiny_model.blocks[1].mlp.W_out, dtype=torch.bool)
    mask[3] = True
    edited = copy_model(tiny_model)
    with torch.no_grad():
        edited.blocks[1].mlp.W_out[3] = 0
    with torch.no_grad(), pruned(tiny_model, {"blocks.1.mlp.W_out": mask}):
        got = tiny_model(batch.tokens)
    torch.testing.assert_close(got, edited(batch.tokens))


def test_snip_data_per_protection(smoke_protected):
    """The official recipe's SNIP data: RMU's forget corpus against unrelated text (loss on the
    last k tokens), the unlearned model's own greedy tokens on forget prompts against the retain
    answers for NPO/DPO; 'official' picks one per protection."""
    from dataclasses import replace

    from interp.attacks.prune import SPEC, Config, snip_data
    from interp.data.folder import DataFolder
    from interp.errors import InterpError
    from interp.model.load import get_tokenizer, load_model

    folder, out, _ = smoke_protected
    model = load_model(out / "npo", device="cpu")
    tok = get_tokenizer(model)
    base = Config(n_forget=4, n_utility=4, batch_size=2, last_k=8, gen_tokens=6, max_len=64)
    corpus = snip_data(model, folder, replace(base, snip_data="corpus"))
    train = DataFolder(folder).train_entities("forget")
    rows_c = DataFolder(folder).rows("forget_corpus")
    first_text = next(r["text"] for r in rows_c if r["entity"] in train)  # train entities only
    ids = tok(first_text)["input_ids"][:64]
    b = corpus.forget[0]
    assert b.tokens[0, : len(ids)].tolist() == ids
    assert int(b.loss_mask[0].sum()) == min(8, len(ids) - 1)  # the last k tokens
    gen = snip_data(model, folder, replace(base, snip_data="generations"))
    g = gen.forget[0]
    n = int(g.valid[0].sum())
    assert 1 <= int(g.loss_mask[0].sum()) <= 8  # about gen_tokens, re-tokenized in context
    assert gen.n_utility == 4  # the retain answers only
    from interp.scoring import generate_greedy

    rows = [r for r in DataFolder(folder).preference() if r["split"] == "forget"]
    prompt = next(r["prompt"] for r in rows if r.get("entity", r.get("id")) in train)
    said = generate_greedy(model, [tok(prompt)["input_ids"]], max_new_tokens=6)[0]
    assert tok.decode(g.tokens[0, :n].tolist()).endswith(said.strip()[-5:])
    assert SPEC.config_for(replace(base, snip_data="official"), "rmu").snip_data == "corpus"
    assert SPEC.config_for(replace(base, snip_data="official"), "dpo").snip_data == "generations"
    assert SPEC.config_for(base, "rmu").snip_data == "pairs"
    with pytest.raises(InterpError, match="SNIP data"):
        Config(snip_data="wikitext")
