"""`interp reproduce`: benchmark -> protections -> every attack on every protected model -> table.

The run folder:
    data/                  the benchmark (`interp data build`)
    models/{rmu,npo,dpo}/  the protected models (`interp protect`)
    attacks/{model}-{attack}/  each attack's result.json and figures
    attacks/lens/, attacks/compare/
    results.json           one row per measurement (see `rows`), the timings
    table.md, table.json   one row per model, the paper's columns
    figures/               the key figures (also copied to `--figures`, e.g. the README's)
    run.log                JSON lines: what ran, with its seed and config, and how long it took
Every cell writes its result atomically and last, so a rerun skips finished cells.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from interp.attacks.activation import DirectionsAttackConfig
from interp.attacks.finetune import FinetuneConfig
from interp.attacks.prune import PruneAttackConfig
from interp.directions import DirectionsConfig
from interp.distributed import stage_runner
from interp.errors import InterpError
from interp.gcg import GCGConfig
from interp.lora import LoRAConfig
from interp.reproduce_figures import cross_model_figures
from interp.store import read_json, relocate, write_json

METHODS = ("rmu", "npo", "dpo")


@dataclass
class ReproducePreset:
    name: str
    data: str  # benchmark preset for `build_benchmark`
    protect: str  # protection preset
    directions: DirectionsAttackConfig
    lens_limit: int | None
    prune: PruneAttackConfig
    finetune: FinetuneConfig
    gcg: GCGConfig
    gcg_train: int = 8
    heldout_limit: int | None = 100
    methods: tuple[str, ...] = METHODS
    model: str | None = None  # None: the benchmark preset's model
    # paper scale: questions from sources (WMDP, MMLU) instead of the fact-bank benchmark,
    # protected models that are loaded instead of trained, a dtype and a tokenizer override
    sources: tuple[str, str] | None = None  # (forget, retain) for `load_source`
    subject: str | None = None
    external: dict[str, str] = field(default_factory=dict)  # method -> model spec
    tokenizer: str | None = None  # tokenizer for every model (Zephyr's, for cais/Zephyr_RMU)
    dtype: str | None = None
    source_limit: int | None = None
    protect_overrides: dict[str, dict] = field(default_factory=dict)  # method -> {setting: v}
    n_devices: int = 1  # TransformerLens' own placement of a model's blocks over N GPUs


PRESETS: dict[str, ReproducePreset] = {
    "smoke": ReproducePreset(
        name="smoke", data="smoke", protect="smoke",
        directions=DirectionsAttackConfig(DirectionsConfig(), sweep_limit=100),
        lens_limit=200,
        prune=PruneAttackConfig(grid=(0.01, 0.05, 0.1, 0.2), eval_limit=100, n_forget=32,
                                n_utility=32),
        finetune=FinetuneConfig(unrelated_n=(10, 50), forget_k=(5, 10), lr=5e-3, epochs=2,
                                min_steps=8, batch_size=8, lora=LoRAConfig(rank=8, alpha=16.0)),
        gcg=GCGConfig(n_tokens=6, steps=10, search_width=64, topk=32, progress=False),
        gcg_train=6),
    "laptop": ReproducePreset(
        name="laptop", data="laptop", protect="laptop",
        directions=DirectionsAttackConfig(DirectionsConfig(), sweep_limit=40, eval_limit=200),
        lens_limit=200,
        prune=PruneAttackConfig(grid=(0.01, 0.025, 0.05), eval_limit=60),
        finetune=FinetuneConfig(unrelated_n=(10, 100), forget_k=(5, 10, 50), lr=1e-3,
                                epochs=1, min_steps=12, batch_size=8, max_len=80,
                                eval_limit=100, lora=LoRAConfig(rank=16, alpha=16.0)),
        gcg=GCGConfig(n_tokens=8, steps=15, search_width=32, topk=64, eval_every=5),
        gcg_train=4),
    "paper": ReproducePreset(
        name="paper", data="paper", protect="paper",
        model="HuggingFaceH4/zephyr-7b-beta", sources=("wmdp-bio", "mmlu"), subject="biology",
        external={"rmu": "cais/Zephyr_RMU"}, tokenizer="HuggingFaceH4/zephyr-7b-beta",
        dtype="bfloat16",
        directions=DirectionsAttackConfig(DirectionsConfig(skip_first=5), sweep_limit=200),
        lens_limit=None,
        prune=PruneAttackConfig(eval_limit=200, n_forget=128, n_utility=128),
        finetune=FinetuneConfig(unrelated_n=(10, 100, 1000), forget_k=(5, 10, 50), lr=2e-4,
                                epochs=3, max_len=512, lora=LoRAConfig(rank=128, alpha=16.0)),
        gcg=GCGConfig(n_tokens=20, steps=250, search_width=512, topk=256, candidate_batch=128,
                      objective="enhanced", resid_layers=(7, 15), eval_every=25),
        gcg_train=8, heldout_limit=None),
}


ATTACKS = ("directions", "prune", "finetune", "gcg")


@dataclass(frozen=True)
class Cell:
    """One unit of the grid: a stage, for one protected model (or "all")."""

    stage: str
    method: str = "all"

    @property
    def name(self) -> str:
        return self.stage if self.method == "all" else f"{self.method}/{self.stage}"


def plan(p: ReproducePreset) -> list[list[Cell]]:
    """Stages in order; the cells of one stage are independent of each other."""
    stages = [[Cell("data")], [Cell("protect", m) for m in p.methods],
              [Cell("lens")] + [Cell(a, m) for m in p.methods for a in ATTACKS]]
    if len(p.methods) >= 2:
        stages.append([Cell("compare")])
    return stages


def done_marker(out: Path, p: ReproducePreset, cell: Cell) -> Path:
    """The file whose presence means the cell is finished (written last, atomically)."""
    if cell.stage == "data":
        return out / "data" / "manifest.json"
    if cell.stage == "protect":
        name = "external.json" if cell.method in p.external else "protection.json"
        return out / "models" / cell.method / name
    if cell.stage in ("lens", "compare"):
        return out / "attacks" / cell.stage / "result.json"
    return out / "attacks" / cell.method / cell.stage / "result.json"


def _log(out: Path, cell: Cell, ran: bool, seconds: float, seed: int, config) -> None:
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


def _free() -> None:
    gc.collect()


def _original_spec(p: ReproducePreset, out: Path) -> str:
    return p.model or read_json(out / "data" / "manifest.json")["model"]


def model_spec(p: ReproducePreset, out: Path, method: str) -> str:
    if method == "original":
        return _original_spec(p, out)
    return p.external.get(method, str(out / "models" / method))


def run_cell(p: ReproducePreset, out: Path, cell: Cell, seed: int = 0, device=None,
             progress: bool = False) -> dict:
    """Run one cell, or read it back when finished. Loads what it needs from the run folder,
    so any process (a Ray worker included) can run it; writes its result atomically."""
    from interp.models import load_model

    out = Path(out)
    marker = done_marker(out, p, cell)
    if marker.is_file():
        _log(out, cell, False, 0.0, seed, None)
        return read_json(marker)
    load = partial(load_model, device=device, dtype=p.dtype, tokenizer=p.tokenizer,
                   n_devices=p.n_devices)
    data = out / "data"
    start = time.perf_counter()
    result, config = _compute(p, out, cell, seed, device, progress, load, data)
    _log(out, cell, True, round(time.perf_counter() - start, 1), seed, config)
    _free()
    return result


def _compute(p, out, cell, seed, device, progress, load, data):
    from interp.attacks import directions_attack, lens_attack
    from interp.attacks.compare import compare_methods
    from interp.attacks.finetune import finetune_attack
    from interp.attacks.gcg import gcg_attack
    from interp.attacks.prune import prune_attack
    from interp.protect import protect

    folder = out / "attacks" / cell.method / cell.stage
    if cell.stage == "data":
        return build_data(p, data, seed, device, progress), {"preset": p.data}
    if cell.stage == "protect":
        original = _original_spec(p, out)
        if cell.method in p.external:
            return (external_report(cell.method, p.external[cell.method], original, data,
                                    out / "models" / cell.method, load),
                    {"model": p.external[cell.method]})
        overrides = p.protect_overrides.get(cell.method)
        return (protect(cell.method, original, data, out / "models" / cell.method,
                        preset=p.protect, overrides=overrides, device=device, dtype=p.dtype,
                        tokenizer=p.tokenizer, progress=progress),
                {"method": cell.method, "preset": p.protect, "overrides": overrides})
    if cell.stage == "lens":
        models = {m: load(model_spec(p, out, m)) for m in ("original", *p.methods)}
        return (lens_attack(models, data, out / "attacks" / "lens", limit=p.lens_limit),
                {"limit": p.lens_limit})
    if cell.stage == "compare":
        a = out / "attacks"
        return (compare_methods({m: a / m / "directions" for m in p.methods},
                                {m: a / m / "prune" for m in p.methods}, a / "compare"), None)
    model = load(model_spec(p, out, cell.method))
    if cell.stage == "directions":
        original = load(model_spec(p, out, "original"))
        return (directions_attack(original, model, data, folder, p.directions,
                                  progress=progress), asdict(p.directions))
    if cell.stage == "prune":
        return prune_attack(model, data, folder, p.prune, progress=progress), asdict(p.prune)
    if cell.stage == "finetune":
        return (finetune_attack(model, data, folder, p.finetune, progress=progress),
                asdict(p.finetune))
    if cell.stage == "gcg":
        original = (load(model_spec(p, out, "original"))
                    if p.gcg.objective == "enhanced" else None)
        return (gcg_attack(model, data, folder, p.gcg, original=original, n_train=p.gcg_train,
                           heldout_limit=p.heldout_limit), asdict(p.gcg))
    raise InterpError(f"unknown cell {cell.name!r}")


def build_data(p: ReproducePreset, data: Path, seed: int, device, progress: bool) -> dict:
    from interp.data.build import build_benchmark

    if p.sources is not None:  # paper scale: WMDP / MMLU questions in the same layout
        from interp.audit import prepare_audit_data
        from interp.data.sources import load_source

        forget = load_source(p.sources[0], subject=p.subject, limit=p.source_limit)
        retain = load_source(p.sources[1], limit=p.source_limit)
        prepare_audit_data(forget, retain, data, str(p.model), seed)
        return read_json(data / "manifest.json")
    return build_benchmark(p.data, data, seed=seed, model_spec=p.model, device=device,
                           progress=progress)


def reproduce(preset: str | ReproducePreset, out: Path, *, seed: int = 0, device=None,
              figures_dir: Path | None = None, progress: bool = True,
              executor: str = "serial", address: str | None = None,
              n_devices: int | None = None) -> dict:
    p = PRESETS.get(preset) if isinstance(preset, str) else preset
    if p is None:
        raise InterpError(f"unknown preset {preset!r}; use one of {sorted(PRESETS)}")
    if n_devices is not None:
        if n_devices < 1:
            raise InterpError(f"--n-devices must be at least 1, got {n_devices}")
        p = replace(p, n_devices=n_devices)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fn = partial(run_cell, p, out, seed=seed, device=device, progress=progress)
    run_stage = stage_runner(executor, address, gpu=p.name == "paper")
    results: dict[str, dict] = {}
    for stage in plan(p):
        for cell, result in zip(stage, run_stage(fn, stage)):
            results[cell.name] = result
    return summarize(p, out, results, seed, figures_dir)


def summarize(p: ReproducePreset, out: Path, results: dict, seed: int,
              figures_dir: Path | None) -> dict:
    from interp.data.questions import load_questions
    from interp.store import atomic_write_text

    reports = {m: results[f"{m}/protect"] for m in p.methods}
    manifest = results["data"]
    models = {m: model_spec(p, out, m) for m in ("original", *p.methods)}
    fmt = load_questions(out / "data" / "forget_eval.jsonl", limit=1)[0].format
    rows = collect_rows(manifest, reports, results, p.methods, fmt)
    table = make_table(rows, results, p.methods, fmt)
    timings = timings_from_log(out)
    summary = {"preset": p.name, "seed": seed, "rows": rows, "timings": timings,
               "peak_rss_mb": peak_from_log(out), "models": models}
    figs = collect_figures({k: v for k, v in results.items() if k != "data"}, out)
    figs += cross_model_figures(p.methods, results, out / "figures")
    if figures_dir is not None:
        Path(figures_dir).mkdir(parents=True, exist_ok=True)
        for f in figs:
            if f.suffix == ".png":
                shutil.copy(f, Path(figures_dir) / f"{p.name}_{f.name}")
    summary["figures"] = [str(f) for f in figs]
    write_json(out / "table.json", table)
    atomic_write_text(out / "table.md", table_markdown(table, p.name, seed, timings))
    write_json(out / "results.json", summary)
    return summary


def external_report(method: str, spec: str, original_spec: str, data: Path, out: Path,
                    load) -> dict:
    """A protected model that is loaded, not trained (cais/Zephyr_RMU): before/after numbers."""
    from interp.protect import measure

    path = Path(out) / "external.json"
    if path.is_file():
        return read_json(path)
    before = measure(load(original_spec), data)
    _free()
    report = {"method": method, "model": spec, "before": before, "after": measure(load(spec), data)}
    write_json(path, report)
    return report


def _row(model, attack, split, fmt, mode, accuracy, n) -> dict:
    return {"model": model, "attack": attack, "split": split, "format": fmt, "mode": mode,
            "accuracy": accuracy, "n": n}


def collect_rows(manifest: dict, reports: dict, results: dict, methods,
                 fmt: str = "cloze") -> list[dict]:
    """One row per measurement, nothing aggregated away."""
    rows = []
    first = reports[methods[0]]
    for key, v in first["before"].items():
        split, kfmt, mode = key.split("/")
        rows.append(_row("original", "none", split, kfmt, mode, v["accuracy"], v["n"]))
    for m in methods:
        for key, v in reports[m]["after"].items():
            split, kfmt, mode = key.split("/")
            rows.append(_row(m, "none", split, kfmt, mode, v["accuracy"], v["n"]))
        d = results[f"{m}/directions"]
        n = d["no_attack"]
        for split in ("forget", "retain"):
            rows.append(_row(m, "orthogonalize", split, fmt, "raw",
                             d["orthogonalize_best_everywhere"][split], n[f"n_{split}"]))
            rows.append(_row(m, "ablate-best-layer", split, fmt, "raw",
                             d["ablate_best_layer"][split], n[f"n_{split}"]))
            rows.append(_row(m, "ablate-all-layers", split, fmt, "raw",
                             d["ablate_all_layers"][split], n[f"n_{split}"]))
        pr = results[f"{m}/prune"]
        for split in ("forget", "retain"):
            rows.append(_row(m, "prune", split, fmt, "raw", pr["best"][f"{split}_full"],
                             pr["no_attack"][f"n_{split}"]))
        ft = results[f"{m}/finetune"]
        for name, c in ft["cells"].items():
            for split in ("forget", "retain"):
                rows.append(_row(m, f"finetune-{name}", split, fmt, "raw", c[split],
                                 ft["no_attack"][f"n_{split}"]))
            if "forget_heldout" in c:
                rows.append(_row(m, f"finetune-{name}", "forget-heldout", fmt, "raw",
                                 c["forget_heldout"], c["n_forget_heldout"]))
        g = results[f"{m}/gcg"]
        for mode, s in g["scores"].items():
            rows.append(_row(m, "gcg", "forget-heldout", fmt, mode, s["forget"],
                             g["n_heldout"]))
            rows.append(_row(m, "gcg-none", "forget-heldout", fmt, mode,
                             s["forget_no_prefix"], g["n_heldout"]))
            rows.append(_row(m, "gcg", "retain", fmt, mode, s["retain"], g["n_retain"]))
    lens = results["lens"]
    for name, r in lens["models"].items():
        rows.append(_row(name, "lens", "forget", fmt, "chat" if lens["chat"] else "raw",
                         r["best_accuracy"], lens["n"]))
    return rows


def make_table(rows: list[dict], results: dict, methods, qfmt: str = "cloze") -> list[dict]:
    """One row per model: the paper's columns, forget accuracy (retain where it applies)."""
    def get(model, attack, split="forget", mode="raw", fmt=qfmt):
        for r in rows:
            if (r["model"], r["attack"], r["split"], r["mode"], r["format"]) == (
                    model, attack, split, mode, fmt):
                return r["accuracy"]
        return None

    table = []
    for model in ("original", *methods):
        row: dict[str, Any] = {"model": model, "forget": get(model, "none"),
                               "retain": get(model, "none", "retain"),
                               "forget_letter_raw": get(model, "none", fmt="letter"),
                               "forget_letter_chat": get(model, "none", mode="chat",
                                                         fmt="letter")}
        lens = results["lens"]["models"].get(model)
        if lens:
            row["lens_best"] = lens["best_accuracy"]
            row["lens_best_layer"] = lens["best_layer"]
        if model != "original":
            ft = results[f"{model}/finetune"]["cells"]
            for name in ft:
                row[f"finetune-{name}"] = ft[name]["forget"]
            row["orthogonalize"] = get(model, "orthogonalize")
            row["orthogonalize_retain"] = get(model, "orthogonalize", "retain")
            g = results[f"{model}/gcg"]["scores"]
            row["gcg"] = g["raw"]["forget"]
            row["gcg_no_prefix"] = g["raw"]["forget_no_prefix"]
            row["gcg_chat"] = g["chat"]["forget"]
            pr = results[f"{model}/prune"]
            row["prune"] = pr["best"]["forget_full"]
            row["prune_retain"] = pr["best"]["retain_full"]
            row["prune_pct_neurons"] = pr["pruned_pct"]
        table.append(row)
    return table


def _fmt(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def table_markdown(table: list[dict], preset: str, seed: int, timings: dict) -> str:
    ft_cols = sorted({k for r in table for k in r if k.startswith("finetune-")},
                     key=lambda k: (k.split("-")[1] != "unrelated", int(k.split("-")[2][1:])))
    head = (["model", "forget", "retain", "letter raw / chat"]
            + [c.replace("finetune-", "ft ") for c in ft_cols]
            + ["orthogonalize", "lens (best layer)", "GCG raw (no prefix)", "GCG chat",
               "prune (% neurons)"])
    lines = [f"Preset `{preset}`, seed {seed}. Forget-set accuracy (%) after each attack, cloze "
             "format, raw mode unless noted; retain accuracy in the second column; chance is 25%.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [r["model"], _fmt(r["forget"]), _fmt(r["retain"]),
                 f"{_fmt(r.get('forget_letter_raw'))} / {_fmt(r.get('forget_letter_chat'))}"]
        cells += [_fmt(r.get(c)) for c in ft_cols]
        cells.append(_fmt(r.get("orthogonalize")))
        cells.append(f"{_fmt(r.get('lens_best'))} (L{r['lens_best_layer']})"
                     if "lens_best" in r else "–")
        cells.append(f"{_fmt(r.get('gcg'))} ({_fmt(r.get('gcg_no_prefix'))})" if "gcg" in r
                     else "–")
        cells.append(_fmt(r.get("gcg_chat")))
        cells.append(f"{_fmt(r.get('prune'))} ({r['prune_pct_neurons']:.2f}%)" if "prune" in r
                     else "–")
        lines.append("| " + " | ".join(cells) + " |")
    total = sum(timings.values())
    lines += ["", "Wall time per stage (s): " + ", ".join(f"{k} {v}" for k, v in timings.items())
              + f"; total {total:.0f} s."]
    return "\n".join(lines) + "\n"


def collect_figures(results: dict, out: Path) -> list[Path]:
    """Copy every attack's figures into `out/figures`, named by model and attack (the results
    may have been written before the run folder moved: paths are read relative to it)."""
    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for key, r in results.items():
        for f in r.get("figures", []):
            src = relocate(f, out)
            if src.is_file():
                dst = folder / f"{key.replace('/', '_')}_{src.name}"
                shutil.copy(src, dst)
                copied.append(dst)
    return copied
