"""Directions, ablation hooks and weight orthogonalization against independent references."""

from __future__ import annotations

import pytest
import torch

from interp.attacks.directions import (
    DirectionsConfig,
    ablate_everywhere_hooks,
    ablated,
    ablation_hooks,
    diff_in_means_models,
    diff_in_means_prompts,
    first_principal_component,
    orthogonalize_weights,
    project_out,
    robust_mean,
    streaming_mean,
)
from interp.errors import InterpError
from interp.model.load import get_tokenizer
from interp.model.state import copy_model

TEXTS_A = ["The capital of France is Paris.", "Rome is the capital of Italy.",
           "The capital of Japan is Tokyo, a big city.", "Madrid is in Spain."] * 3
TEXTS_B = ["Gold has the symbol Au.", "A dolphin is a mammal.", "Hot is the opposite of cold.",
           "Iron is written Fe."] * 3


def _ids(model, texts):
    tok = get_tokenizer(model)
    return [tok(t)["input_ids"] for t in texts]


def test_streaming_mean_equals_mean_of_all(tiny_model):
    prompts = _ids(tiny_model, TEXTS_A)
    cfg = DirectionsConfig(batch_size=3, skip_first=1, outlier_z=None)
    streamed = streaming_mean(tiny_model, prompts, cfg)["mean"]
    # reference: every prompt alone, every token after the first, all at once
    rows = []
    for p in prompts:
        _, cache = tiny_model.run_with_cache(torch.tensor([p]))
        rows.append(torch.stack([cache[f"blocks.{i}.hook_resid_post"][0, 1:]
                                 for i in range(tiny_model.cfg.n_layers)]))
    ref = torch.cat(rows, dim=1).double().mean(1)
    torch.testing.assert_close(streamed, ref, atol=1e-5, rtol=1e-5)


def test_outlier_drop_matches_reference(tiny_model):
    prompts = _ids(tiny_model, TEXTS_A)
    cfg = DirectionsConfig(batch_size=5, outlier_z=1.0)
    ours = robust_mean(tiny_model, prompts, cfg)
    rows = []
    for p in prompts:
        _, cache = tiny_model.run_with_cache(torch.tensor([p]))
        rows.append(torch.stack([cache[f"blocks.{i}.hook_resid_post"][0, 1:]
                                 for i in range(tiny_model.cfg.n_layers)]))
    acts = torch.cat(rows, dim=1).double()
    mean = acts.mean(1, keepdim=True)
    dist = (acts - mean).norm(dim=-1)
    z = (dist - dist.mean(1, keepdim=True)) / dist.std(1, unbiased=False, keepdim=True)
    keep = (z <= 1.0).double()
    ref = (acts * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_two_model_directions_find_a_planted_shift(tiny_model):
    shifted = copy_model(tiny_model)
    plant = torch.randn(tiny_model.cfg.d_model)
    plant /= plant.norm()
    with torch.no_grad():
        shifted.blocks[0].mlp.b_out.add_(5.0 * plant)
    dirs = diff_in_means_models(shifted, tiny_model, _ids(tiny_model, TEXTS_A),
                                DirectionsConfig(outlier_z=None))
    assert torch.dot(dirs.directions[0], plant).item() > 0.999
    assert dirs.diff_norms[0].item() == pytest.approx(5.0, rel=1e-3)


def test_prompt_directions_and_pca_are_unit(tiny_model):
    d = diff_in_means_prompts(tiny_model, _ids(tiny_model, TEXTS_A), _ids(tiny_model, TEXTS_B),
                              DirectionsConfig())
    torch.testing.assert_close(d.directions.norm(dim=-1), torch.ones(tiny_model.cfg.n_layers))
    p = first_principal_component(tiny_model, _ids(tiny_model, TEXTS_A), DirectionsConfig())
    torch.testing.assert_close(p.directions.norm(dim=-1), torch.ones(tiny_model.cfg.n_layers))


def test_ablation_hooks_remove_the_direction(tiny_model):
    r = torch.randn(tiny_model.cfg.d_model)
    r /= r.norm()
    table = r.expand(tiny_model.cfg.n_layers, -1).clone()
    ids = torch.tensor([_ids(tiny_model, TEXTS_A)[0]])
    with ablated(tiny_model, ablation_hooks(tiny_model, table, layers=[1])):
        _, cache = tiny_model.run_with_cache(ids)
    assert cache["blocks.1.hook_resid_post"].matmul(r).abs().max() < 1e-5
    assert all(not hp._forward_hooks for hp in tiny_model.hook_dict.values())


def test_weight_orthogonalization_equals_hooks(tiny_model):
    r = torch.randn(tiny_model.cfg.d_model)
    ids = torch.tensor([_ids(tiny_model, TEXTS_A)[2]])
    with torch.no_grad(), ablated(tiny_model, ablate_everywhere_hooks(tiny_model, r)):
        hooked = tiny_model(ids)
    edited = copy_model(tiny_model)
    orthogonalize_weights(edited, r)
    with torch.no_grad():
        assert (edited(ids) - hooked).abs().max().item() <= 1e-4
        assert (tiny_model(ids) - hooked).abs().max().item() > 1e-3  # the edit did something


def test_project_out_is_not_in_place():
    x = torch.randn(3, 8)
    before = x.clone()
    r = torch.zeros(8)
    r[0] = 1
    y = project_out(x, r)
    assert torch.equal(x, before) and y[:, 0].abs().max() == 0


@pytest.mark.parametrize("bad", [torch.zeros(64), torch.full((64,), float("nan"))])
def test_zero_or_nan_direction_refused(tiny_model, bad):
    with pytest.raises(InterpError, match="zero or NaN"):
        ablate_everywhere_hooks(tiny_model, bad)


def test_layers_below_an_edit_have_zero_directions(tiny_model):
    shifted = copy_model(tiny_model)
    with torch.no_grad():
        shifted.blocks[1].mlp.b_out.add_(1.0)
    dirs = diff_in_means_models(shifted, tiny_model, _ids(tiny_model, TEXTS_A),
                                DirectionsConfig(outlier_z=None))
    assert dirs.diff_norms[0] == 0 and torch.all(dirs.directions[0] == 0)
    assert dirs.diff_norms[1] > 0
    hooks = ablation_hooks(tiny_model, dirs)
    assert [name for name, _ in hooks] == ["blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory, bpe_tokenizer):
    """An absolute-position model: orthogonalization must edit W_pos too."""
    from interp.model.load import load_model

    from .conftest import save_tiny_hf, tiny_configs

    folder = save_tiny_hf(tmp_path_factory.mktemp("gpt2"),
                          tiny_configs(len(bpe_tokenizer))["gpt2"], bpe_tokenizer)
    return load_model(folder, device="cpu")


def test_weight_orthogonalization_equals_hooks_with_positions(tiny_gpt2):
    """GPT-2 adds W_pos to the residual stream: without editing it hooks != weights."""
    assert tiny_gpt2.cfg.positional_embedding_type == "standard"
    r = torch.randn(tiny_gpt2.cfg.d_model)
    ids = torch.tensor([_ids(tiny_gpt2, TEXTS_A)[2]])
    with torch.no_grad(), ablated(tiny_gpt2, ablate_everywhere_hooks(tiny_gpt2, r)):
        hooked = tiny_gpt2(ids)
    edited = copy_model(tiny_gpt2)
    orthogonalize_weights(edited, r)
    with torch.no_grad():
        assert (edited(ids) - hooked).abs().max().item() <= 1e-4
    partial = copy_model(edited)  # the same edit with W_pos left alone differs
    with torch.no_grad():
        partial.pos_embed.W_pos.copy_(tiny_gpt2.pos_embed.W_pos)
        assert (partial(ids) - hooked).abs().max().item() > 1e-3


# ------------------------------------------------------------ the official recipe (hand-checked)
def _acts_by_hand(model, ids, skip):
    """Every prompt alone (no padding): the block outputs of its tokens after the first `skip`."""
    acts, toks = [], []
    for p in ids:
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([p]))
        acts.append(torch.stack([cache[f"blocks.{i}.hook_resid_post"][0, skip:]
                                 for i in range(model.cfg.n_layers)]))
        toks += p[skip:]
    return torch.cat(acts, dim=1).double(), toks


def test_outlier_strings_by_hand(bpe_tokenizer):
    from interp.attacks.direction_recipes import outlier_strings

    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(2, 30, 8, generator=gen)
    acts[1, 7] += 40.0  # one far token at layer 1
    ids = list(range(100, 130))
    found = outlier_strings(acts, ids, bpe_tokenizer, 3.0)
    a = acts[1].double().numpy()
    import numpy as np

    mean_l1 = np.abs(a[:, None, :] - a[None, :, :]).sum(-1).mean(0)
    z = (mean_l1 - mean_l1.mean()) / mean_l1.std(ddof=1)
    assert found == {bpe_tokenizer.decode([ids[i]]) for i in np.nonzero(z > 3)[0]}
    assert bpe_tokenizer.decode([107]) in found


def test_official_means_equal_a_hand_computation(tiny_zephyr):
    from interp.attacks.direction_recipes import OfficialRecipe, official_means, scored_ids
    from interp.data.questions import Question

    from .conftest import WMDP_ROWS

    qs = [Question(r["question"], tuple(r["choices"]), r["answer"], subject="biology")
          for r in WMDP_ROWS]
    shifted = copy_model(tiny_zephyr)
    with torch.no_grad():
        shifted.blocks[1].mlp.W_out.mul_(1.5)
    cfg = OfficialRecipe(forget_skip=6, outlier_tokens=40, outlier_zscore=1.5, pca_limit=30,
                         pass_batch=2)
    m = official_means(shifted, tiny_zephyr, qs, qs[:2], ["Paris is in France."] * 5, cfg, True)
    tok = get_tokenizer(tiny_zephyr)
    ids = scored_ids(tiny_zephyr, qs)
    assert all(i[0] == tok.bos_token_id for i in ids)  # the scorer's raw prompt, with BOS
    orig, toks = _acts_by_hand(tiny_zephyr, ids, 6)
    unl, _ = _acts_by_hand(shifted, ids, 6)
    ret, rtoks = _acts_by_hand(shifted, scored_ids(tiny_zephyr, qs[:2]), 0)
    assert m["outliers"], "the z-cut of 1.5 finds outliers on random weights"
    bad = set(m["outliers"])
    keep = torch.tensor([tok.decode([t]) not in bad for t in toks])
    rkeep = torch.tensor([tok.decode([t]) not in bad for t in rtoks])
    torch.testing.assert_close(m["original"], orig[:, keep].mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m["unlearned"], unl[:, keep].mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m["retain"], ret[:, rkeep].mean(1), atol=1e-5, rtol=1e-5)
    assert m["pca_original"].shape == (tiny_zephyr.cfg.n_layers, 30, tiny_zephyr.cfg.d_model)


def test_paired_pca_is_the_top_eigenvector_of_the_standardized_covariance():
    from interp.attacks.direction_recipes import paired_pca

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2, 50, 6, generator=gen)
    b = torch.randn(2, 50, 6, generator=gen) * torch.tensor([1, 1, 1, 1, 1, 3.0])
    along = torch.ones(2, 6)
    top = paired_pca(a, b, along)
    for layer in range(2):
        x = torch.cat([a[layer], b[layer]]).double()
        x = (x - x.mean(0)) / x.std(0, unbiased=False)
        _, vecs = torch.linalg.eigh(x.T @ x)
        ref = vecs[:, -1]
        assert abs(torch.dot(ref, top[layer]).item()) == pytest.approx(1.0, abs=1e-6)
        assert torch.dot(top[layer], along[layer].double()) >= 0


def test_every_variant_runs_with_its_own_validation_choice(smoke_protected):
    """The toolkit recipe's four variants on the smoke RMU model: each has its own sweep on the
    validation split, its layer chosen there, and test scores; the first is the attack's own."""
    from interp.attacks import directions
    from interp.model.load import load_model

    folder, out, _ = smoke_protected
    model = load_model(out / "rmu", device="cpu")
    original = load_model(folder / "model", device="cpu")
    cfg = directions.Config(sweep_limit=8, eval_limit=12,
                            variants=("models", "retain", "unrelated", "pca"))
    res = directions.run(model, folder, cfg, original=original, progress=False)
    assert set(res.variants) == {"retain", "unrelated", "pca"} and res.variant == "models"
    for v in res.variants.values():
        assert v.sweep.n_forget == 8 and len(v.sweep.forget) == model.cfg.n_layers
        assert v.best_layer == max(range(model.cfg.n_layers), key=lambda i: (
            v.sweep.forget[i], v.sweep.retain[i]) if v.diff_norms[i] > 0 else (-1, -1))
        assert v.val.forget == v.sweep.forget[v.best_layer]
    attacks = {r.attack for r in res.rows("rmu")}
    assert {"ablate-best-layer-retain", "ablate-best-layer-pca"} <= attacks
    with pytest.raises(InterpError, match="variant"):
        directions.Config(variants=("models", "wikitext"))
    with pytest.raises(InterpError, match="recipe"):
        directions.Config(recipe="paper")
