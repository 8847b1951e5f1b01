"""Directions, ablation hooks and weight orthogonalization against independent references."""

from __future__ import annotations

import copy

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
    shifted = copy.deepcopy(tiny_model)
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
    edited = copy.deepcopy(tiny_model)
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
    shifted = copy.deepcopy(tiny_model)
    with torch.no_grad():
        shifted.blocks[1].mlp.b_out.add_(1.0)
    dirs = diff_in_means_models(shifted, tiny_model, _ids(tiny_model, TEXTS_A),
                                DirectionsConfig(outlier_z=None))
    assert dirs.diff_norms[0] == 0 and torch.all(dirs.directions[0] == 0)
    assert dirs.diff_norms[1] > 0
    hooks = ablation_hooks(tiny_model, dirs)
    assert [name for name, _ in hooks] == ["blocks.1.hook_resid_post"]
