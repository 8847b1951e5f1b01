"""Plotly figures, written as HTML and PNG (PNG through kaleido, when it can render).

The HTML opens offline: it loads plotly.js from a `plotly.min.js` file beside it or in a folder
above it (a run folder holds one copy for all its figures: `ship_plotlyjs`), never from the web.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go

PLOTLY_JS = "plotly.min.js"
SEARCH_UP = 4  # folders above a figure searched for a shared plotly.min.js


def ship_plotlyjs(folder: Path) -> Path:
    """Write plotly.js into `folder` once (figures at most `SEARCH_UP` levels below use it)."""
    from plotly.offline import get_plotlyjs

    path = Path(folder) / PLOTLY_JS
    if not path.is_file():
        from interp.store import atomic_write_text

        atomic_write_text(path, get_plotlyjs())
    return path


def _plotlyjs_for(folder: Path) -> Path:
    for candidate in [folder, *list(folder.parents)[:SEARCH_UP]]:
        if (candidate / PLOTLY_JS).is_file():
            return candidate / PLOTLY_JS
    return ship_plotlyjs(folder)


def copy_figure(src: Path, dst: Path) -> None:
    """Copy a written figure; an HTML copy loads plotly.js from where the copy lies."""
    import re
    import shutil

    dst = Path(dst)
    if Path(src).suffix != ".html":
        shutil.copy(src, dst)
        return
    js = os.path.relpath(_plotlyjs_for(dst.parent), dst.parent)
    text = re.sub(r'src="[^"]*plotly\.min\.js"', f'src="{Path(js).as_posix()}"',
                  Path(src).read_text(encoding="utf-8"))
    from interp.store import atomic_write_text

    atomic_write_text(dst, text)


def save_figure(fig: go.Figure, path_stem: Path) -> list[Path]:
    """Write `stem.html` (plotly.js from a local file) and `stem.png`; returns the files."""
    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    html = path_stem.with_suffix(".html")
    js = os.path.relpath(_plotlyjs_for(path_stem.parent), path_stem.parent)
    fig.write_html(str(html), include_plotlyjs=Path(js).as_posix())
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


def error_bars(ys: Sequence[float], n: int | None) -> dict | None:
    """Plotly error bars: each accuracy's 95% Wilson interval over `n` questions."""
    if not n:
        return None
    from interp.stats import wilson

    cis = [wilson(y, n) for y in ys]
    return {"type": "data", "symmetric": False, "array": [hi - y for y, (_, hi) in zip(ys, cis)],
            "arrayminus": [y - lo for y, (lo, _) in zip(ys, cis)], "thickness": 1}


def layer_lines(series: dict[str, Sequence[float]], *, title: str, ytitle: str = "accuracy",
                chance: float | None = 0.25, n: dict[str, int] | int | None = None
                ) -> go.Figure:
    """One line per named series over layers 0..L-1; with `n` (questions per point, one number
    or one per series), each accuracy carries its 95% interval as an error bar."""
    fig = go.Figure()
    for name, ys in series.items():
        count = n.get(name) if isinstance(n, dict) else n
        fig.add_trace(go.Scatter(x=list(range(len(ys))), y=list(ys), mode="lines+markers",
                                 name=name, error_y=error_bars(list(ys), count)))
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", annotation_text="chance")
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title=ytitle, template="plotly_white")
    return fig


def budget_lines(series: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
                 xtitle: str, n: dict[str, int] | int | None = None,
                 baseline: dict[str, float] | None = None, chance: float | None = 0.25
                 ) -> go.Figure:
    """Accuracy against a budget (optimizer steps, candidates evaluated): one line per named
    series of (xs, ys), each point with its 95% interval; dotted: the no-attack accuracy."""
    import plotly.express as px

    colors = px.colors.qualitative.Plotly
    fig = go.Figure()
    for i, (name, (xs, ys)) in enumerate(series.items()):
        color = colors[i % len(colors)]
        count = n.get(name) if isinstance(n, dict) else n
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=name,
                                 line={"color": color}, marker={"color": color},
                                 error_y=error_bars(list(ys), count)))
        if baseline and name in baseline:
            fig.add_hline(y=baseline[name], line_dash="dot", line_color=color)
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dash", line_color="grey", annotation_text="chance")
    fig.update_layout(title=title, xaxis_title=xtitle, yaxis_title="forget accuracy (test)",
                      template="plotly_white")
    return fig


def heatmap(z, x, y, *, title: str, xtitle: str, ytitle: str) -> go.Figure:
    """Accuracy as a heatmap of `z` (rows along `y`, columns along `x`)."""
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale="Viridis", colorbar_title="accuracy"))
    fig.update_layout(title=title, xaxis_title=xtitle, yaxis_title=ytitle, template="plotly_white")
    return fig


def bar_chart(names: Sequence[str], series: dict[str, Sequence[float]], *, title: str,
              n: dict[str, int] | None = None, ytitle: str = "accuracy",
              chance: float | None = 0.25) -> go.Figure:
    """Grouped bars, one group per name and one bar per series; with `n` (questions per series),
    each accuracy carries its 95% interval as an error bar."""
    fig = go.Figure()
    for label, ys in series.items():
        ys = [float("nan") if y is None else y for y in ys]
        fig.add_trace(go.Bar(x=list(names), y=ys, name=label,
                             error_y=error_bars(ys, (n or {}).get(label))))
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", annotation_text="chance")
    fig.update_layout(title=title, yaxis_title=ytitle, barmode="group", template="plotly_white")
    return fig
