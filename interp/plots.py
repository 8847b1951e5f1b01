"""Plotly figures, written as HTML and PNG (PNG through kaleido, when it can render)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go


def save_figure(fig: go.Figure, path_stem: Path) -> list[Path]:
    """Write `stem.html` and `stem.png`; returns the files written."""
    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    html = path_stem.with_suffix(".html")
    fig.write_html(str(html), include_plotlyjs="cdn")
    written = [html]
    png = path_stem.with_suffix(".png")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig.write_image(str(png), width=900, height=520, scale=1)
        written.append(png)
    except Exception as exc:  # kaleido missing or unable to start: HTML still stands
        warnings.warn(f"PNG export failed ({exc.__class__.__name__}); wrote {html} only",
                      stacklevel=2)
    return written


def layer_lines(series: dict[str, Sequence[float]], *, title: str, ytitle: str = "accuracy",
                chance: float | None = 0.25) -> go.Figure:
    """One line per named series over layers 0..L-1."""
    fig = go.Figure()
    for name, ys in series.items():
        fig.add_trace(go.Scatter(x=list(range(len(ys))), y=list(ys), mode="lines+markers",
                                 name=name))
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", annotation_text="chance")
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title=ytitle, template="plotly_white")
    return fig


def heatmap(z, x, y, *, title: str, xtitle: str, ytitle: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale="Viridis", colorbar_title="accuracy"))
    fig.update_layout(title=title, xaxis_title=xtitle, yaxis_title=ytitle, template="plotly_white")
    return fig
