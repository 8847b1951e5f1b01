"""The per-layer ablation sweep: ablate one layer's own direction at a time and score.

`ablation_sweep(model, directions, forget, retain)` removes, for each layer in turn, that layer's
direction at its hook point (`ablation_hooks` inside `ablated`, removed on exit), and scores the
forget questions (and the retain questions, when given). The result carries the per-layer
accuracies, the no-ablation baseline and the best layer (highest forget accuracy), and plots
them. The directions attack picks its layer with it (`interp.attacks.directions.run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import plotly.graph_objects as go
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from interp.attacks.ablation import LayerDirections, ablated, ablation_hooks
from interp.data.questions import Question
from interp.errors import InterpError
from interp.plots import layer_lines
from interp.scoring import evaluate


@dataclass
class AblationSweep:
    """Accuracy after ablating each layer's own direction, one layer at a time.

    forget, retain: one accuracy per layer (layer 0 first; retain None when no retain questions
    were scored); baseline_forget, baseline_retain: without any ablation; ablated: whether the
    layer had a direction to remove (a layer with none scores its baseline); best_layer: among
    the ablated layers, the highest forget accuracy (ties: the higher retain accuracy, then the
    lower layer).
    """

    forget: list[float]
    n_forget: int
    baseline_forget: float
    ablated: list[bool]
    best_layer: int
    retain: list[float] | None = None
    n_retain: int = 0
    baseline_retain: float | None = None

    @property
    def best_accuracy(self) -> float:
        """The forget accuracy at the best layer."""
        return self.forget[self.best_layer]

    def plot(self, title: str = "Accuracy after ablating one layer's direction") -> go.Figure:
        """One line per question set over the layers, each point with its 95% Wilson interval;
        dotted lines: the accuracies without ablation."""
        import plotly.express as px

        series = {"forget": self.forget, **({"retain": self.retain} if self.retain else {})}
        n = {"forget": self.n_forget, "retain": self.n_retain}
        fig = layer_lines(series, title=title, n=n)
        colors = px.colors.qualitative.Plotly
        baselines = {"forget": self.baseline_forget, "retain": self.baseline_retain}
        for i, name in enumerate(series):
            color = colors[i % len(colors)]
            fig.data[i].update(line={"color": color}, marker={"color": color})
            fig.add_hline(y=baselines[name], line_dash="dot", line_color=color,
                          annotation_text=f"no ablation ({name})")
        return fig


def _table(directions: LayerDirections | Tensor) -> Tensor:
    return directions.directions if isinstance(directions, LayerDirections) else directions


def _has_direction(directions: LayerDirections | Tensor, layer: int) -> bool:
    if isinstance(directions, LayerDirections):
        return bool(directions.diff_norms[layer] != 0)
    return bool(directions[layer].norm() != 0)


def ablation_sweep(model: HookedTransformer, directions: LayerDirections | Tensor,
                   questions: Sequence[Question], retain: Sequence[Question] | None = None, *,
                   batch_size: int = 32, chat: bool = False,
                   baseline: tuple[float, float | None] | None = None, progress: bool = False,
                   desc: str = "ablation sweep") -> AblationSweep:
    """Ablate each layer's own direction (`directions`: a `LayerDirections`, or an (n_layers,
    d_model) table at resid_post), one layer at a time, and score the forget `questions` and,
    when given, the `retain` questions (`evaluate`, raw or `chat` prompts). `baseline`: the
    accuracies without ablation (forget, retain) when already known, else they are scored. A
    layer whose direction is zero (nothing differs there) is not run: it scores its baseline."""
    if not questions:
        raise InterpError("no forget questions to score the ablation sweep on")
    n_layers, rows = model.cfg.n_layers, _table(directions).shape[0]
    if rows != n_layers:
        raise InterpError(f"{rows} directions for a model of {n_layers} layers: the sweep needs "
                          "one per layer")
    ablated_layers = [_has_direction(directions, layer) for layer in range(n_layers)]
    if not any(ablated_layers):
        raise InterpError("every layer's direction is zero: nothing to ablate")
    retain = list(retain or [])

    def score(qs: Sequence[Question]) -> float:
        return evaluate(model, qs, progress=False, batch_size=batch_size, chat=chat).accuracy

    if baseline is None:
        baseline = (score(questions), score(retain) if retain else None)
    base_f, base_r = baseline
    forget_acc: list[float] = []
    retain_acc: list[float] = []
    for layer in tqdm(range(n_layers), desc=desc, leave=False, disable=not progress):
        if not ablated_layers[layer]:  # ablation would be the identity
            forget_acc.append(base_f)
            retain_acc += [base_r] if retain else []
            continue
        with ablated(model, ablation_hooks(model, directions, layers=[layer])):
            forget_acc.append(score(questions))
            retain_acc += [score(retain)] if retain else []
    best = max((i for i in range(n_layers) if ablated_layers[i]),
               key=lambda i: (forget_acc[i], retain_acc[i] if retain else 0.0))
    return AblationSweep(forget=forget_acc, n_forget=len(questions), baseline_forget=base_f,
                         ablated=ablated_layers, best_layer=best,
                         retain=retain_acc if retain else None, n_retain=len(retain),
                         baseline_retain=base_r if retain else None)
