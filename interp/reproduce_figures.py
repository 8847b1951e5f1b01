"""Figures across protected models: one line per model, from a reproduction's cell results."""

from __future__ import annotations

from pathlib import Path

import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.plots import layer_lines, save_figure

COLORS = px.colors.qualitative.Plotly


def ablation_sweep_figure(methods, results: dict) -> go.Figure | None:
    series = {m: results[f"{m}/directions"]["sweep"]["forget"] for m in methods
              if f"{m}/directions" in results}
    if not series:
        return None
    return layer_lines(series, title="Forget accuracy after ablating one layer's direction")


def finetune_figure(methods, results: dict) -> go.Figure | None:
    cells = {m: results[f"{m}/finetune"] for m in methods if f"{m}/finetune" in results}
    if not cells:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("unrelated text (n samples)",
                                                        "forget samples (k)"))
    for col, kind in ((1, "unrelated"), (2, "forget")):
        for i, (m, r) in enumerate(cells.items()):
            color = COLORS[i % len(COLORS)]
            done = sorted((c for c in r["cells"].values() if c["kind"] == kind),
                          key=lambda c: c["size"])
            fig.add_trace(go.Scatter(
                x=["none"] + [str(c["size"]) for c in done],
                y=[r["no_attack"]["forget"]] + [c["forget"] for c in done],
                mode="lines+markers", name=m, legendgroup=m, showlegend=col == 1,
                line={"color": color}, marker={"color": color}),
                row=1, col=col)
    fig.update_xaxes(type="category")
    fig.update_layout(title="Forget accuracy after LoRA finetuning", yaxis_title="accuracy",
                      template="plotly_white")
    return fig


def gcg_figure(methods, results: dict) -> go.Figure | None:
    runs = {m: results[f"{m}/gcg"] for m in methods if f"{m}/gcg" in results}
    if not runs:
        return None
    fig = go.Figure()
    for m, r in runs.items():
        fig.add_trace(go.Scatter(x=list(range(1, len(r["losses"]) + 1)), y=r["losses"],
                                 mode="lines+markers", name=m))
    fig.update_layout(title="GCG loss per step (best prefix so far)", xaxis_title="step",
                      yaxis_title="loss", template="plotly_white")
    return fig


def cross_model_figures(methods, results: dict, folder: Path) -> list[Path]:
    """Write the across-model figures into `folder`; returns the files written."""
    written: list[Path] = []
    for name, make in (("all_ablation_sweep", ablation_sweep_figure),
                       ("all_finetune", finetune_figure), ("all_gcg_loss", gcg_figure)):
        fig = make(methods, results)
        if fig is not None:
            written += save_figure(fig, Path(folder) / name)
    return written
