"""`interp reproduce`: benchmark -> protections -> every attack on every protected model -> table.

The run folder:
    data/                        the benchmark (`interp data build`)
    models/{method}/             the protected models (`interp protect`)
    attacks/{model}/{attack}/    each attack's result.json and figures (model: a method, or
                                 "original" for attacks that also read the unprotected model)
    attacks/compare/             directions and pruned neurons compared across protections
    results.json                 one row per measurement, the timings, the models (paths
                                 relative to the run folder)
    table.md, table.json         one row per model, a column per attack
    figures/                     the figures (also copied to `--figures`, e.g. the README's)
    plotly.min.js                the one copy every HTML figure of the run loads (offline)
    run.log                      JSON lines: what ran, with its seed and config, and how long
Every cell writes its result atomically and last, so a rerun skips finished cells. The stages and
their cells come from the registries of protections and attacks and the preset's configs.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from interp.attacks import base as attack_base
from interp.attacks import compare
from interp.attacks.base import registry
from interp.errors import InterpError
from interp.pipelines.executors import stage_runner
from interp.pipelines.presets import PRESETS, Preset, domain_presets, get_preset
from interp.pipelines.settings import config_differences, same_settings
from interp.plots import ship_plotlyjs
from interp.store import atomic_write_text, read_json, write_json


@dataclass(frozen=True)
class GridCell:
    """One unit of the grid: a stage, for one model (or "all")."""

    stage: str
    method: str = "all"

    @property
    def name(self) -> str:
        """The cell's name: the stage, or "method/stage" for a cell of one model."""
        return self.stage if self.method == "all" else f"{self.method}/{self.stage}"


def attack_models(p: Preset, attack: str) -> tuple[str, ...]:
    """The models an attack runs on: every protected model, and the original for the lens."""
    on_original = registry()[attack].SPEC.on_original
    return (("original",) if on_original else ()) + p.methods


def compared_attacks(p: Preset) -> list[str]:
    """The attacks whose folders the compare stage reads (`AttackSpec.compared`)."""
    return [name for name, module in registry().items() if name in p.attacks
            and module.SPEC.compared is not None and module.SPEC.compared(p.attacks[name])]


def compared_models(result: dict) -> set[str]:
    """The protected models a finished compare result covers (its "a vs b" pairs)."""
    pairs = [*result.get("direction_cosine", {}), *result.get("neuron_jaccard", {})]
    return {m for pair in pairs for m in pair.split(" vs ")}


def grid(p: Preset) -> list[list[GridCell]]:
    """Stages in order; the cells of one stage are independent of each other."""
    attacks = [GridCell(name, m) for name in registry() if name in p.attacks
               for m in attack_models(p, name)]
    stages = [[GridCell("data")], [GridCell("protect", m) for m in p.methods], attacks]
    if len(p.methods) >= 2 and compared_attacks(p):
        stages.append([GridCell("compare")])
    return stages


def cell_folder(out: Path, cell: GridCell) -> Path:
    if cell.stage == "data":
        return out / "data"
    if cell.stage == "protect":
        return out / "models" / cell.method
    if cell.stage == "compare":
        return out / "attacks" / "compare"
    return out / "attacks" / cell.method / cell.stage


def done_marker(out: Path, p: Preset, cell: GridCell) -> Path:
    """The file whose presence means the cell is finished (written last, atomically)."""
    folder = cell_folder(out, cell)
    if cell.stage == "data":
        return folder / "manifest.json"
    if cell.stage == "protect":
        return folder / ("external.json" if cell.method in p.external else "protection.json")
    return folder / attack_base.RESULT_JSON


def read_cell(p: Preset, out: Path, cell: GridCell) -> Any:
    """A finished cell's result, typed."""
    from interp.protections import base as protection_base

    marker = done_marker(out, p, cell)
    if cell.stage == "data":
        return read_json(marker)
    if cell.stage == "protect":
        cls = (protection_base.ProtectionResult if cell.method in p.external
               else protection_base.get(cell.method).Result)
        return cls.from_json(read_json(marker))
    if cell.stage == "compare":
        return compare.Result.from_json(read_json(marker))
    return registry()[cell.stage].Result.from_json(read_json(marker))


def _log(out: Path, cell: GridCell, ran: bool, seconds: float, seed: int, config) -> None:
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": cell.stage, "cell": cell.name,
             "ran": ran, "seconds": seconds, "seed": seed,
             "config": json.loads(json.dumps(config, default=str)) if config else None,
             "process_peak_rss_mb": round(peak_rss_mb())}
    with open(out / "run.log", "a") as fh:  # one line per write; results themselves are atomic
        fh.write(json.dumps(entry) + "\n")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _log_entries(out: Path) -> list[dict]:
    """run.log's entries of cells that actually computed (a line cut by a crash is skipped)."""
    path = out / "run.log"
    entries = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if e.get("ran", True):
            entries.append(e)
    return entries


def timings_from_log(out: Path) -> dict[str, float]:
    """Seconds per stage: the last run of each cell that actually computed, summed."""
    last = {e["cell"]: (e["stage"], e["seconds"]) for e in _log_entries(out)}
    out_t: dict[str, float] = {}
    for stage, seconds in last.values():
        out_t[stage] = round(out_t.get(stage, 0.0) + seconds, 1)
    return out_t


def peak_from_log(out: Path) -> float | None:
    """The largest process peak memory (MB) any computing cell logged (None before logging)."""
    peaks = [e["process_peak_rss_mb"] for e in _log_entries(out)
             if e.get("process_peak_rss_mb") is not None]
    return max(peaks) if peaks else None


def original_spec(p: Preset, out: Path) -> str:
    from interp.data.folder import DataFolder

    return p.model or DataFolder(out / "data").model_spec


def model_spec(p: Preset, out: Path, method: str) -> str:
    if method == "original":
        return original_spec(p, out)
    return p.external.get(method, str(out / "models" / method))


def relative_spec(spec: str, out: Path) -> str:
    """A model spec as results.json records it: relative to the run folder when inside it."""
    try:
        return str(Path(spec).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return spec


def run_cell(p: Preset, out: Path, cell: GridCell, seed: int = 0, device=None,
             progress: bool = False):
    """Run one cell, or read it back when finished. Loads what it needs from the run folder,
    so any process (a Ray worker included) can run it; writes its result atomically."""
    from interp.model.load import load_model

    out = Path(out)
    if cell.stage == "compare" and done_marker(out, p, cell).is_file() and \
            compared_models(read_json(done_marker(out, p, cell))) != set(p.methods):
        shutil.rmtree(cell_folder(out, cell))  # read from the attack folders: computed again
    if done_marker(out, p, cell).is_file():
        same_cell_settings(p, out, cell)
        _log(out, cell, False, 0.0, seed, None)
        return read_cell(p, out, cell)
    load = partial(load_model, device=device, dtype=p.dtype, tokenizer=p.tokenizer,
                   n_devices=p.n_devices, letter_ids=p.letter_ids)
    start = time.perf_counter()
    _, config = _compute(p, out, cell, seed, device, progress, load)
    _log(out, cell, True, round(time.perf_counter() - start, 1), seed, config)
    gc.collect()
    return read_cell(p, out, cell)  # as written: the same whichever process computed it


def cell_config(p: Preset, cell: GridCell) -> Any:
    """The config a protection or attack cell computes with (None: data, compare, external)."""
    if cell.stage == "protect":
        return None if cell.method in p.external else p.protections[cell.method]
    if cell.stage in p.attacks:
        return registry()[cell.stage].SPEC.config_for(p.attacks[cell.stage], cell.method)
    return None


def same_cell_settings(p: Preset, out: Path, cell: GridCell) -> None:
    """A finished cell is reused only if it was computed with the preset's settings now."""
    cfg = cell_config(p, cell)
    if cfg is None:
        return
    saved = read_json(done_marker(out, p, cell)).get("config")
    differ = config_differences(cfg, saved) if isinstance(saved, dict) else []
    if differ:
        raise InterpError(f"{cell.name} in {out} was computed with other settings: "
                          f"{', '.join(differ[:3])}; use a new --out folder, or delete "
                          f"{cell_folder(out, cell)} to recompute it (and the cells that read it)")


def _compute(p: Preset, out: Path, cell: GridCell, seed: int, device, progress: bool, load):
    from interp.pipelines.protect import protect

    data, folder = out / "data", cell_folder(out, cell)
    if cell.stage == "data":
        return build_data(p, data, seed, device, progress), {"preset": p.data}
    if cell.stage == "protect":
        if cell.method in p.external:
            return (external_report(cell.method, p.external[cell.method], original_spec(p, out),
                                    data, folder, load), {"model": p.external[cell.method]})
        cfg = p.protections[cell.method]
        return (protect(cell.method, original_spec(p, out), data, folder, cfg, preset=p.name,
                        device=device, dtype=p.dtype, tokenizer=p.tokenizer, progress=progress,
                        letter_ids=p.letter_ids),
                attack_base.to_jsonable(cfg))
    if cell.stage == "compare":
        sources = {name: {m: out / "attacks" / m / name for m in p.methods}
                   for name in compared_attacks(p)}
        return compare.run(**sources, out=folder), None
    module = registry().get(cell.stage)
    if module is None:
        raise InterpError(f"unknown cell {cell.name!r}")
    cfg = module.SPEC.config_for(p.attacks[cell.stage], cell.method)
    model = load(model_spec(p, out, cell.method))
    original = (load(model_spec(p, out, "original"))
                if module.SPEC.wants_original(cfg) and cell.method != "original" else None)
    result = module.run(model, data, cfg, original=original, out=folder, progress=progress)
    return result, attack_base.to_jsonable(cfg)


def build_data(p: Preset, data: Path, seed: int, device, progress: bool) -> dict:
    from interp.data.build import build_benchmark

    if p.sources is not None:  # paper scale: WMDP / MMLU questions in the same layout
        from interp.data.prepare import prepare_data
        from interp.data.sources import load_source

        forget = load_source(p.sources[0], subject=p.subject, limit=p.source_limit)
        retain = load_source(p.sources[1], limit=p.source_limit)
        prepare_data(forget, retain, data, str(p.model), seed)
        manifest = read_json(data / "manifest.json")
        if "control" not in manifest:  # the questions the original gets wrong, rotated
            from interp.data.control import write_audit_control
            from interp.model.load import load_model

            original = load_model(str(p.model), device=device, dtype=p.dtype,
                                  tokenizer=p.tokenizer, letter_ids=p.letter_ids)
            manifest["control"] = write_audit_control(data, original, None, seed)
            write_json(data / "manifest.json", manifest)
        return manifest
    return build_benchmark(p.data, data, seed=seed, model_spec=p.model, device=device,
                           progress=progress, letter_ids=p.letter_ids)


def reproduce(preset: str | Preset, out: Path, *, seed: int = 0, device=None,
              figures_dir: Path | None = None, progress: bool = True,
              executor: str = "serial", address: str | None = None,
              n_devices: int | None = None, dtype: str | None = None,
              tokenizer: str | None = None, letter_ids: str | None = None) -> dict:
    """Run a preset end to end in `out` (benchmark, protections, every attack on every protected
    model, the table) and return the summary written to `results.json`; finished cells are read
    back, not recomputed."""
    from interp.prompts import check_letter_ids

    p = get_preset(preset) if isinstance(preset, str) else preset
    p = replace(p, dtype=dtype or p.dtype, tokenizer=tokenizer or p.tokenizer,
                letter_ids=check_letter_ids(letter_ids or p.letter_ids))
    if n_devices is not None:
        if n_devices < 1:
            raise InterpError(f"--n-devices must be at least 1, got {n_devices}")
        p = replace(p, n_devices=n_devices)
    out = Path(out)
    if p.domains:  # one run per forget source, each in its own folder, then one table
        return reproduce_domains(p, out, seed=seed, device=device, figures_dir=figures_dir,
                                 progress=progress, executor=executor, address=address)
    out.mkdir(parents=True, exist_ok=True)
    same_run_settings(out, p)
    for cell in (c for stage in grid(p) for c in stage):  # before anything computes
        if done_marker(out, p, cell).is_file():
            same_cell_settings(p, out, cell)
    ship_plotlyjs(out)  # one copy for every figure of the run (they open offline)
    fn = partial(run_cell, p, out, seed=seed, device=device, progress=progress)
    run_stage = stage_runner(executor, address, gpu=p.name == "paper")
    results: dict[str, Any] = {}
    for stage in grid(p):
        for cell, result in zip(stage, run_stage(fn, stage)):
            results[cell.name] = result
    return summarize(p, out, results, seed, figures_dir)


def reproduce_domains(p: Preset, out: Path, **kwargs) -> dict:
    """Each domain of `p` (WMDP-bio, WMDP-cyber) as a run of its own in `out/{domain}`, then
    `out/results.json` (each domain's summary) and `out/table.md` (their tables in turn)."""
    summaries = {}
    for sub in domain_presets(p):
        summaries[sub.domain] = reproduce(sub, out / sub.domain, **kwargs)
    tables = [f"## {name}\n\n" + (out / name / "table.md").read_text() for name in summaries]
    atomic_write_text(out / "table.md", "\n".join(tables))
    summary = {"preset": p.name, "domains": {name: {"folder": name, **s}
                                             for name, s in summaries.items()}}
    write_json(out / "results.json", summary)
    return summary


RUN_SETTINGS = "settings.json"


def same_run_settings(out: Path, p: Preset) -> None:
    """A run folder keeps the settings every cell was scored under (letter-id rule, dtype,
    tokenizer, which protected models are loaded and from where): a rerun with others would mix
    them in one table (an attack cell of a loaded NPO read back for a trained one), so it is
    refused."""
    same_settings(out / RUN_SETTINGS,
                  {"letter_ids": p.letter_ids, "dtype": p.dtype, "tokenizer": p.tokenizer,
                   "external": dict(sorted(p.external.items()))}, out)


def summarize(p: Preset, out: Path, results: dict, seed: int,
              figures_dir: Path | None) -> dict:
    """Collect the cells' results into `results.json`, `table.json`, `table.md` and `figures/` (PNGs
    also copied to `figures_dir`), and return the summary."""
    from interp.pipelines.controls import annotate, entities_reader
    from interp.pipelines.report import (
        collect_figures,
        collect_rows,
        cross_model_figures,
        make_table,
        table_markdown,
    )

    models = ("original", *p.methods)
    rows = annotate(collect_rows(p.methods, results), entities_reader(out / "data"), seed)
    columns, table = make_table(rows, models)
    timings = timings_from_log(out)
    summary = {"preset": p.name, "seed": seed, "letter_ids": p.letter_ids,
               **({"domain": p.domain} if p.domain else {}),
               "rows": [r.to_json() for r in rows],
               "timings": timings, "peak_rss_mb": peak_from_log(out),
               "models": {m: relative_spec(model_spec(p, out, m), out) for m in models}}
    cells = [c for stage in grid(p) for c in stage if c.stage != "data"]
    folders = {c.name: cell_folder(out, c) for c in cells}
    figs = collect_figures({c.name: results[c.name] for c in cells}, folders, out / "figures")
    figs += cross_model_figures(p.methods, results, out / "figures")
    from interp.pipelines.report import recovered_chart
    from interp.plots import save_figure

    if (chart := recovered_chart(rows, p.methods)) is not None:
        figs += save_figure(chart, out / "figures" / "all_recovered_share")
    if figures_dir is not None:
        Path(figures_dir).mkdir(parents=True, exist_ok=True)
        for f in figs:
            if f.suffix == ".png":
                label = f"{p.name}-{p.domain}" if p.domain else p.name
                shutil.copy(f, Path(figures_dir) / f"{label}_{f.name}")
    summary["figures"] = [str(f.relative_to(out)) for f in figs]
    write_json(out / "table.json", {"columns": columns, "rows": table})
    atomic_write_text(out / "table.md", table_markdown(columns, table, p.name, seed, timings))
    write_json(out / "results.json", summary)
    return summary


def external_report(method: str, spec: str, original: str, data: Path, out: Path, load):
    """A protected model that is loaded, not trained (cais/Zephyr_RMU): before/after numbers."""
    from interp.protections.base import ProtectionResult, measure

    before = measure(load(original), data)
    gc.collect()
    report = ProtectionResult(method=method, before=before, after=measure(load(spec), data),
                              losses=[], train_seconds=0.0, model=spec, data=str(data))
    write_json(Path(out) / "external.json", report.to_json())
    return report


__all__ = ["PRESETS", "GridCell", "grid", "reproduce", "run_cell", "summarize"]
