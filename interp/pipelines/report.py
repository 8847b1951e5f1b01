"""Results into a table, figures and pages: rows from every result, the paper's table (one row per
model, a column per attack), the across-model figures, and the audit's HTML report."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Iterable

from interp.attacks.base import Row, registry
from interp.plots import copy_figure, save_figure
from interp.stats import overlaps


def collect_rows(methods: Iterable[str], results: dict[str, Any]) -> list[Row]:
    """One row per measurement, nothing aggregated away: the unprotected model's (from the
    first protection's "before"), each protected model's, then every attack's, in table order."""
    methods = list(methods)
    rows = results[f"{methods[0]}/protect"].rows_before("original")
    for m in methods:
        rows += results[f"{m}/protect"].rows(m)
    for model in ("original", *methods):
        for name in registry():
            if (r := results.get(f"{model}/{name}")) is not None:
                rows += r.rows(model)
    # a row an attack reports for another model (the original on the same quantization grid)
    # comes once per protected model: keep the first
    seen, out = set(), []
    for r in rows:
        key = (r.model, r.attack, r.split, r.format, r.mode)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


OVERLAP = "≈"  # marks an attack whose interval overlaps the no-attack interval
SUPPLIED = "†"  # marks an attack that lifted the never-known control above the original's


def _cell(r: Row, mark: bool = False) -> str:
    low, high = r.ci
    value = f"{100 * r.accuracy:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
    if mark:
        value += f" {OVERLAP}"
    if r.supplied:
        value += f" {SUPPLIED}"
    return f"{value} ({r.note})" if r.note else value


def _share(r: Row) -> str:
    """The recovered share with its interval, in percent."""
    if r.recovered is None:
        return "–"
    ci = r.recovered_ci
    return (f"{100 * r.recovered:.0f}%" + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci
                                           else ""))


def _deltas(r: Row, base: Row | None) -> str:
    """Δforget (attack minus no attack, points) and Δcontrol beside it."""
    if base is None and r.d_control is None:
        return "–"
    parts = []
    if base is not None:
        parts.append(f"Δf {100 * (r.accuracy - base.accuracy):+.1f}")
    if r.d_control is not None:
        parts.append(f"Δc {100 * r.d_control:+.1f}")
    return " / ".join(parts)


def baseline_row(rows: list[Row], r: Row) -> Row | None:
    """The no-attack row an attack's row is compared with: same model, split, format and mode
    (an attack scored on its own questions, as GCG's held-out ones, has its own `-none` row)."""
    for attack in (f"{r.attack}-none", "none"):
        for b in rows:
            if (b.model, b.attack, b.split, b.format, b.mode) == (
                    r.model, attack, r.split, r.format, r.mode):
                return b
    return None


def seed_spread(rows: list[Row], model: str) -> dict[str, list[float]]:
    """Per table column, the test forget accuracy of a trained cell at every seed run: the cell's
    own row and its `-seedS` rows (`interp.attacks.seeds`)."""
    import re

    out: dict[str, list[float]] = {}
    for r in rows:
        m = re.fullmatch(r"(.+)-seed\d+", r.attack)
        if r.model != model or r.split != "forget" or m is None:
            continue
        main = next((b for b in rows if b.model == model and b.attack == m.group(1)
                     and b.split == "forget" and b.column), None)
        if main is not None:
            out.setdefault(main.column, [main.accuracy]).append(r.accuracy)
    return out


def make_table(rows: list[Row], models: Iterable[str]) -> tuple[list[str], list[dict]]:
    """(columns, one dict per model: column -> shown text) from the rows that name a column;
    each number with its 95% interval, marked when it overlaps the no-attack interval."""
    columns: list[str] = []
    table = []
    for model in models:
        entry: dict[str, str] = {"model": model}
        share: dict[str, str] = {"model": f"{model}: recovered share"}
        delta: dict[str, str] = {"model": f"{model}: Δforget / Δcontrol"}
        for r in rows:
            if r.model == model and r.column:
                if r.column not in columns:
                    columns.append(r.column)
                base = baseline_row(rows, r) if r.attack != "none" else None
                entry[r.column] = _cell(r, base is not None and overlaps(r.ci, base.ci))
                if r.attack != "none":
                    share[r.column] = _share(r)
                    delta[r.column] = _deltas(r, base)
        table.append(entry)
        spread = {"model": f"{model}: over seeds"}
        for column, values in seed_spread(rows, model).items():
            spread[column] = (f"{100 * min(values):.1f}–{100 * max(values):.1f} "
                              f"({len(values)} seeds)")
        for extra in (share, delta, spread):
            if any(v not in ("–",) for k, v in extra.items() if k != "model"):
                table.append(extra)
    return columns, table


def table_markdown(columns: list[str], table: list[dict], preset: str, seed: int,
                   timings: dict) -> str:
    """`table.md`: the results table in markdown (a row per model, a column per attack), with the
    wall time per stage."""
    head = ["model", *columns]
    lines = [f"Preset `{preset}`, seed {seed}. Forget-set accuracy (%) after each attack, raw mode "
             "unless noted (GCG: held-out forget questions); retain accuracy in its own column; "
             "chance is 25%. In brackets the 95% interval (entity bootstrap where the row "
             "kept its questions, else Wilson); "
             f"{OVERLAP} marks an attack whose interval overlaps the no-attack one (no "
             f"difference shown); {SUPPLIED} marks an attack that lifted the never-known control "
             "above the original's no-attack control (paired test, and above chance): it "
             "supplied knowledge, so its forget number is not evidence of recovery. Below each "
             "model: the recovered share (attacked − unlearned) / (original − unlearned) on the "
             "same test questions, with its entity-bootstrap interval, and Δforget / Δcontrol "
             "in points against no attack. An unmarked cell is not thereby proven unconfounded.",
             "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for entry in table:
        lines.append("| " + " | ".join(entry.get(c, "–") for c in head) + " |")
    total = sum(timings.values())
    lines += ["", "Wall time per stage (s): " + ", ".join(f"{k} {v}" for k, v in timings.items())
              + f"; total {total:.0f} s."]
    return "\n".join(lines) + "\n"


def recovered_chart(rows: list[Row], models: Iterable[str]):
    """One bar per protected model and attack column: the recovered share on the test split with
    its entity-bootstrap interval (a † above the bar where the attack supplied knowledge); None
    when no row has a share."""
    import plotly.graph_objects as go

    fig = go.Figure()
    shown = False
    for model in models:
        picked = [r for r in rows if r.model == model and r.column and r.recovered is not None
                  and r.split in ("forget", "forget-heldout")]
        if not picked:
            continue
        shown = True
        lo = [r.recovered - r.recovered_ci[0] if r.recovered_ci else 0 for r in picked]
        hi = [r.recovered_ci[1] - r.recovered if r.recovered_ci else 0 for r in picked]
        fig.add_trace(go.Bar(
            x=[r.column for r in picked], y=[r.recovered for r in picked], name=model,
            text=[SUPPLIED if r.supplied else "" for r in picked], textposition="outside",
            error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}))
    if not shown:
        return None
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="the original's accuracy")
    fig.update_layout(title="Recovered share (test split; 95% entity bootstrap; † supplied)",
                      barmode="group",
                      yaxis_title="(attacked − unlearned) / (original − unlearned)",
                      template="plotly_white")
    return fig


def collect_figures(results: dict[str, Any], folders: dict[str, Path], out: Path) -> list[Path]:
    """Copy every result's figures into `out`, named by cell (model_attack_figure)."""
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for key, r in results.items():
        for name in getattr(r, "figures", None) or []:
            src = folders[key] / name
            if src.is_file():
                dst = out / f"{key.replace('/', '_')}_{name}"
                copy_figure(src, dst)
                copied.append(dst)
    return copied


def cross_model_figures(methods: Iterable[str], results: dict[str, Any], out: Path) -> list[Path]:
    """One figure per attack with a line per protected model (`Result.plot_models`); the lens
    figure includes the original model."""
    written: list[Path] = []
    for name, module in registry().items():
        models = (("original",) if module.SPEC.on_original else ()) + tuple(methods)
        per_model = {m: results[f"{m}/{name}"] for m in models if f"{m}/{name}" in results}
        plot_models = getattr(module.Result, "plot_models", None)
        if per_model and plot_models is not None:
            written += save_figure(plot_models(per_model), Path(out) / f"all_{name}")
        extra = getattr(module.Result, "extra_model_figures", None)
        if per_model and extra is not None:
            for stem, fig in extra(per_model).items():
                written += save_figure(fig, Path(out) / f"all_{name}_{stem}")
    return written


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _ci(ci) -> str:
    return "" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def audit_html(result: dict, figures: list[str], out: Path) -> str:
    """The audit's HTML report: the headline, a row per attack and the PNG figures (paths relative
    to `out`)."""
    h = result["headline"]
    rows = "".join(f"<tr><td>{html.escape(a['attack'])}{' †' if a.get('supplied') else ''}"
                   f"</td><td>{_pct(a['forget'])} "
                   f"{_ci(a.get('forget_ci'))}</td><td>{_pct(a['retain'])}</td>"
                   f"<td>{_pct(a.get('control'))}</td><td>{_pct(a.get('recovered'))} "
                   f"{_ci(a.get('recovered_ci'))}</td>"
                   f"<td>{_pct(a.get('val_forget'))}</td></tr>" for a in result["attacks"])
    imgs = "".join(f'<figure><img src="{html.escape(str(Path(f).relative_to(out)))}" '
                   f'width="720"></figure>' for f in figures if f.endswith(".png"))
    frac = "–" if h["recovered_fraction"] is None else f"{100 * h['recovered_fraction']:.0f}%"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>interp audit</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:4px 10px}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>Is the knowledge gone, or only hidden?</h1>
<p>Original <code>{html.escape(result['original'])}</code>, unlearned
<code>{html.escape(result['unlearned'])}</code>, budget {result['budget']},
seed {result['seed']}.</p>
<h2>Recoverable knowledge: {_pct(h['recoverable_forget'])} {_ci(h.get('recoverable_forget_ci'))}
({html.escape(str(h['best_attack']))})</h2>
<p>Forget accuracy on the test split: original {_pct(h['original_forget'])}, unlearned
{_pct(h['unlearned_forget'])}; the attack chosen on the validation split (best forget accuracy
there, retain accuracy at or above {_pct(h['retain_floor'])}) recovers {frac} of the gap on test
(n = {h.get('n_forget')}, 95% Wilson interval in brackets).</p>
<p>Best attack without † (its never-known control at or below the original's):
{html.escape(str(h.get('best_unmarked_attack')))}, {_pct(h.get('best_unmarked_forget'))}
{_ci(h.get('best_unmarked_forget_ci'))}. † marks an attack that lifted the control above the
original's (it supplied knowledge); an unmarked one is not thereby proven unconfounded.</p>
<table><tr><th>attack</th><th>forget (test)</th><th>retain (test)</th><th>control (test)</th>
<th>recovered share</th><th>forget (val)</th></tr>
<tr><td>none (unlearned)</td><td>{_pct(result['no_attack']['unlearned']['forget'])}</td>
<td>{_pct(result['no_attack']['unlearned']['retain'])}</td>
<td>{_pct(result['no_attack']['unlearned'].get('control'))}</td><td></td>
<td>{_pct(result['no_attack'].get('unlearned_val', {}).get('forget'))}</td></tr>{rows}</table>
{imgs}</body></html>
"""
