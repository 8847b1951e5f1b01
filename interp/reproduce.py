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
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from interp.attacks.activation import DirectionsAttackConfig
from interp.attacks.finetune import FinetuneConfig
from interp.attacks.prune import PruneAttackConfig
from interp.directions import DirectionsConfig
from interp.errors import InterpError
from interp.gcg import GCGConfig
from interp.lora import LoRAConfig
from interp.store import read_json, write_json

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
        directions=DirectionsAttackConfig(DirectionsConfig(), sweep_limit=100),
        lens_limit=200,
        prune=PruneAttackConfig(grid=(0.005, 0.01, 0.025, 0.05), eval_limit=100),
        finetune=FinetuneConfig(unrelated_n=(10, 100, 1000), forget_k=(5, 10, 50), lr=1e-3,
                                epochs=1, min_steps=20, batch_size=8, max_len=80,
                                eval_limit=150, lora=LoRAConfig(rank=16, alpha=16.0)),
        gcg=GCGConfig(n_tokens=8, steps=25, search_width=48, topk=64, eval_every=5),
        gcg_train=4),
}


@dataclass
class RunLog:
    path: Path
    timings: dict[str, float] = field(default_factory=dict)

    def cell(self, stage: str, name: str, fn: Callable[[], Any], config: Any = None,
             seed: int = 0) -> Any:
        start = time.perf_counter()
        value = fn()
        seconds = round(time.perf_counter() - start, 1)
        self.timings[stage] = round(self.timings.get(stage, 0.0) + seconds, 1)
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": stage, "cell": name,
                 "seconds": seconds, "seed": seed,
                 "config": json.loads(json.dumps(config, default=str)) if config else None}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:  # append-only log; results themselves are atomic
            fh.write(json.dumps(entry) + "\n")
        return value


def _free() -> None:
    gc.collect()


def reproduce(preset: str | ReproducePreset, out: Path, *, seed: int = 0, device=None,
              figures_dir: Path | None = None, progress: bool = True) -> dict:
    from interp.data.build import build_benchmark
    from interp.models import load_model
    from interp.protect import protect

    p = PRESETS.get(preset) if isinstance(preset, str) else preset
    if p is None:
        raise InterpError(f"unknown preset {preset!r}; use one of {sorted(PRESETS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "run.log")
    timings_path = out / "timings.json"
    if timings_path.is_file():
        log.timings = read_json(timings_path)
    data = out / "data"

    def build():
        if (data / "manifest.json").is_file() and (data / "forget_eval.jsonl").is_file():
            return read_json(data / "manifest.json")
        return build_benchmark(p.data, data, seed=seed, model_spec=p.model, device=device,
                               progress=progress)

    manifest = log.cell("data", "benchmark", build, {"preset": p.data}, seed)
    original_spec = p.model or manifest["model"]
    reports = {}
    for method in p.methods:
        reports[method] = log.cell("protect", method, lambda m=method: protect(
            m, original_spec, data, out / "models" / m, preset=p.protect, device=device,
            progress=progress), {"method": method, "preset": p.protect}, seed)
    write_json(timings_path, log.timings)

    original = load_model(original_spec, device=device)
    models = {"original": original_spec, **{m: str(out / "models" / m) for m in p.methods}}
    attacks = out / "attacks"
    results: dict[str, dict] = {}

    from interp.attacks import directions_attack, lens_attack
    from interp.attacks.finetune import finetune_attack
    from interp.attacks.gcg import gcg_attack
    from interp.attacks.prune import prune_attack

    lens_models = {"original": original}
    if not (attacks / "lens" / "result.json").is_file():
        for method in p.methods:
            lens_models[method] = load_model(models[method], device=device)
    results["lens"] = log.cell("lens", "all", partial(
        lens_attack, lens_models, data, attacks / "lens", limit=p.lens_limit),
        {"limit": p.lens_limit})
    lens_models.clear()
    _free()
    write_json(timings_path, log.timings)
    for method in p.methods:
        folder = attacks / method
        model = load_model(models[method], device=device)
        results[f"{method}/directions"] = log.cell(
            "directions", method, partial(directions_attack, original, model, data,
                                          folder / "directions", p.directions, progress=progress),
            asdict(p.directions))
        results[f"{method}/prune"] = log.cell(
            "prune", method, partial(prune_attack, model, data, folder / "prune", p.prune,
                                     progress=progress), asdict(p.prune))
        results[f"{method}/finetune"] = log.cell(
            "finetune", method, partial(finetune_attack, model, data, folder / "finetune",
                                        p.finetune, progress=progress),
            asdict(p.finetune), p.finetune.seed)
        results[f"{method}/gcg"] = log.cell(
            "gcg", method, partial(gcg_attack, model, data, folder / "gcg", p.gcg,
                                   original=original, n_train=p.gcg_train,
                                   heldout_limit=p.heldout_limit),
            asdict(p.gcg), p.gcg.seed)
        write_json(timings_path, log.timings)
        del model
        _free()
    from interp.attacks.compare import compare_methods

    if len(p.methods) >= 2:
        results["compare"] = log.cell("compare", "all", partial(
            compare_methods, {m: attacks / m / "directions" for m in p.methods},
            {m: attacks / m / "prune" for m in p.methods}, attacks / "compare"))
    rows = collect_rows(manifest, reports, results, p.methods)
    table = make_table(rows, results, p.methods)
    summary = {"preset": p.name, "seed": seed, "rows": rows, "timings": log.timings,
               "models": models}
    figs = collect_figures(results, out / "figures")
    if figures_dir is not None:
        Path(figures_dir).mkdir(parents=True, exist_ok=True)
        for f in figs:
            if f.suffix == ".png":
                shutil.copy(f, Path(figures_dir) / f"{p.name}_{f.name}")
    summary["figures"] = [str(f) for f in figs]
    write_json(out / "table.json", table)
    from interp.store import atomic_write_text

    atomic_write_text(out / "table.md", table_markdown(table, p.name, seed, log.timings))
    write_json(timings_path, log.timings)
    write_json(out / "results.json", summary)
    return summary


def _row(model, attack, split, fmt, mode, accuracy, n) -> dict:
    return {"model": model, "attack": attack, "split": split, "format": fmt, "mode": mode,
            "accuracy": accuracy, "n": n}


def collect_rows(manifest: dict, reports: dict, results: dict, methods) -> list[dict]:
    """One row per measurement, nothing aggregated away."""
    rows = []
    first = reports[methods[0]]
    for key, v in first["before"].items():
        split, fmt, mode = key.split("/")
        rows.append(_row("original", "none", split, fmt, mode, v["accuracy"], v["n"]))
    for m in methods:
        for key, v in reports[m]["after"].items():
            split, fmt, mode = key.split("/")
            rows.append(_row(m, "none", split, fmt, mode, v["accuracy"], v["n"]))
        d = results[f"{m}/directions"]
        n = d["no_attack"]
        for split in ("forget", "retain"):
            rows.append(_row(m, "orthogonalize", split, "cloze", "raw",
                             d["orthogonalize_best_everywhere"][split], n[f"n_{split}"]))
            rows.append(_row(m, "ablate-best-layer", split, "cloze", "raw",
                             d["ablate_best_layer"][split], n[f"n_{split}"]))
            rows.append(_row(m, "ablate-all-layers", split, "cloze", "raw",
                             d["ablate_all_layers"][split], n[f"n_{split}"]))
        pr = results[f"{m}/prune"]
        for split in ("forget", "retain"):
            rows.append(_row(m, "prune", split, "cloze", "raw", pr["best"][f"{split}_full"],
                             pr["no_attack"][f"n_{split}"]))
        ft = results[f"{m}/finetune"]
        for name, c in ft["cells"].items():
            for split in ("forget", "retain"):
                rows.append(_row(m, f"finetune-{name}", split, "cloze", "raw", c[split],
                                 ft["no_attack"][f"n_{split}"]))
            if "forget_heldout" in c:
                rows.append(_row(m, f"finetune-{name}", "forget-heldout", "cloze", "raw",
                                 c["forget_heldout"], c["n_forget_heldout"]))
        g = results[f"{m}/gcg"]
        for mode, s in g["scores"].items():
            rows.append(_row(m, "gcg", "forget-heldout", "cloze", mode, s["forget"],
                             g["n_heldout"]))
            rows.append(_row(m, "gcg-none", "forget-heldout", "cloze", mode,
                             s["forget_no_prefix"], g["n_heldout"]))
            rows.append(_row(m, "gcg", "retain", "cloze", mode, s["retain"], g["n_retain"]))
    lens = results["lens"]
    for name, r in lens["models"].items():
        rows.append(_row(name, "lens", "forget", "cloze", "chat" if lens["chat"] else "raw",
                         r["best_accuracy"], lens["n"]))
    return rows


def make_table(rows: list[dict], results: dict, methods) -> list[dict]:
    """One row per model: the paper's columns, forget accuracy (retain where it applies)."""
    def get(model, attack, split="forget", mode="raw", fmt="cloze"):
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
    head = (["model", "forget", "retain"] + [c.replace("finetune-", "ft ") for c in ft_cols]
            + ["orthogonalize", "lens (best layer)", "GCG raw (no prefix)", "GCG chat",
               "prune (% neurons)"])
    lines = [f"Preset `{preset}`, seed {seed}. Forget-set accuracy (%) after each attack, cloze "
             "format, raw mode unless noted; retain accuracy in the second column; chance is 25%.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [r["model"], _fmt(r["forget"]), _fmt(r["retain"])]
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


def collect_figures(results: dict, folder: Path) -> list[Path]:
    """Copy every attack's figures into one folder, named by model and attack."""
    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for key, r in results.items():
        for f in r.get("figures", []):
            src = Path(f)
            if src.is_file():
                dst = folder / f"{key.replace('/', '_')}_{src.name}"
                shutil.copy(src, dst)
                copied.append(dst)
    return copied
