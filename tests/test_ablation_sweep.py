"""The public per-layer ablation sweep against scoring each layer by hand with its hook."""

from __future__ import annotations

import pytest
import torch

from interp.attacks.ablation import LayerDirections
from interp.attacks.ablation_sweep import AblationSweep, ablation_sweep
from interp.data.questions import Question
from interp.errors import InterpError
from interp.model.hooks import hook_name
from interp.scoring import evaluate

CHOICES = ("Paris", "Rome", "Oslo", "Lima")
FORGET = [Question(f"The capital of {c} is", CHOICES, i, format="cloze")
          for i, c in enumerate(("France", "Italy", "Norway", "Peru"))] + [
    Question(f"Everyone knows that the old capital of {c} is", CHOICES, i, format="cloze")
    for i, c in enumerate(("France", "Italy", "Norway", "Peru"))]
RETAIN = [Question(f"The city of {c} lies in", ("France", "Italy", "Norway", "Peru"), i,
                   format="cloze") for i, c in enumerate(CHOICES)]


def _directions(model, zero_layer: int | None = None) -> LayerDirections:
    g = torch.Generator().manual_seed(0)
    n, d = model.cfg.n_layers, model.cfg.d_model
    table = torch.randn(n, d, generator=g)
    table = table / table.norm(dim=-1, keepdim=True)
    norms = torch.ones(n)
    if zero_layer is not None:
        table[zero_layer], norms[zero_layer] = 0.0, 0.0
    return LayerDirections(table, norms, torch.zeros(n, d, dtype=torch.float64),
                      torch.zeros(n, d, dtype=torch.float64), "resid_post", "models")


def _by_hand(model, r: torch.Tensor, layer: int, questions) -> float:
    def remove(x, hook):
        return x - (x @ r)[..., None] * r

    return evaluate(model, questions, hooks=[(hook_name(layer), remove)], progress=False).accuracy


def _no_hooks(model) -> bool:
    return all(not hp._forward_hooks and not hp.fwd_hooks for hp in model.hook_dict.values())


def test_sweep_equals_scoring_each_layer_by_hand(tiny_model):
    dirs = _directions(tiny_model)
    sweep = ablation_sweep(tiny_model, dirs, FORGET, RETAIN, batch_size=3)
    assert _no_hooks(tiny_model)
    n = tiny_model.cfg.n_layers
    forget = [_by_hand(tiny_model, dirs.directions[i], i, FORGET) for i in range(n)]
    retain = [_by_hand(tiny_model, dirs.directions[i], i, RETAIN) for i in range(n)]
    assert sweep.forget == forget and sweep.retain == retain
    assert sweep.n_forget == len(FORGET) and sweep.n_retain == len(RETAIN)
    assert sweep.baseline_forget == evaluate(tiny_model, FORGET, progress=False).accuracy
    assert sweep.baseline_retain == evaluate(tiny_model, RETAIN, progress=False).accuracy
    assert sweep.ablated == [True] * n
    assert sweep.best_layer == max(range(n), key=lambda i: (forget[i], retain[i]))
    assert sweep.best_accuracy == forget[sweep.best_layer]
    # the ablation did something: some layer's probabilities moved
    plain = evaluate(tiny_model, FORGET, progress=False).probs
    moved = evaluate(tiny_model, FORGET, progress=False, hooks=[
        (hook_name(0), lambda x, hook: x - (x @ dirs.directions[0])[..., None]
         * dirs.directions[0])]).probs
    assert (plain - moved).abs().max() > 1e-4


def test_a_zero_direction_scores_its_baseline_and_is_never_best(tiny_model):
    dirs = _directions(tiny_model, zero_layer=0)
    sweep = ablation_sweep(tiny_model, dirs, FORGET, baseline=(2.0, None))  # impossible score
    assert sweep.forget[0] == 2.0 and sweep.ablated[0] is False
    assert sweep.best_layer != 0 and sweep.retain is None and sweep.baseline_retain is None
    assert sweep.forget[1] == _by_hand(tiny_model, dirs.directions[1], 1, FORGET)
    # a bare (n_layers, d_model) table: resid_post, zero rows likewise skipped
    table = dirs.directions.clone()
    bare = ablation_sweep(tiny_model, table, FORGET)
    assert bare.forget[1:] == sweep.forget[1:] and bare.forget[0] == bare.baseline_forget
    assert _no_hooks(tiny_model)


def test_an_error_inside_leaves_no_hook(tiny_model, monkeypatch):
    import interp.attacks.ablation_sweep as module

    calls = []

    def failing(model, questions, **kw):
        calls.append(1)
        if len(calls) > 1:  # the baseline passes, the first ablated layer fails
            raise RuntimeError("boom")
        return evaluate(model, questions, **kw)

    monkeypatch.setattr(module, "evaluate", failing)
    with pytest.raises(RuntimeError, match="boom"):
        ablation_sweep(tiny_model, _directions(tiny_model), FORGET)
    assert _no_hooks(tiny_model)


def test_bad_input_and_the_plot(tiny_model):
    with pytest.raises(InterpError):
        ablation_sweep(tiny_model, torch.zeros(tiny_model.cfg.n_layers, 8), FORGET)
    with pytest.raises(InterpError):
        ablation_sweep(tiny_model, torch.ones(tiny_model.cfg.n_layers + 1, 8), FORGET)
    with pytest.raises(InterpError):
        ablation_sweep(tiny_model, _directions(tiny_model), [])
    sweep = AblationSweep(forget=[0.5, 0.75], n_forget=8, baseline_forget=0.375,
                          ablated=[True, True], best_layer=1, retain=[1.0, 0.875], n_retain=8,
                          baseline_retain=1.0)
    fig = sweep.plot()
    assert [t.name for t in fig.data] == ["forget", "retain"]
    assert all(t.error_y.array is not None for t in fig.data)  # 95% Wilson intervals
    dotted = [s.y0 for s in fig.layout.shapes if s.line.dash == "dot"]
    assert {0.375, 1.0, 0.25} <= set(dotted)  # the two baselines and chance
