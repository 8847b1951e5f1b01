"""`interp audit`: every attack on a pair a user brings (original, unlearned), any question source.

The forget and retain questions are laid out as a data folder (`interp.data.prepare`), then every
attack of the budget runs as in `interp reproduce`, each as a resumable cell (serially, or as Ray
tasks). The report gives, per attack, the forget and retain accuracy on the test split, and the
headline: the recoverable knowledge, the test forget accuracy (with its 95% interval) of the
attack that did best on the validation split while keeping validation retain accuracy within
`retain_drop` of the unlearned model's.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from interp.attacks.base import registry, to_jsonable
from interp.data.prepare import prepare_data
from interp.data.questions import Question
from interp.errors import InterpError
from interp.pipelines.presets import AUDIT_LIMITS, audit_budget
from interp.pipelines.report import audit_html
from interp.pipelines.settings import config_differences, same_settings
from interp.plots import ship_plotlyjs
from interp.store import atomic_write_text, read_json, write_json

_CACHE: dict[tuple, object] = {}


def _load(spec: str, device, cache: bool, dtype=None, tokenizer=None, letter_ids=None):
    """Load a model; in one process (serial) the pair is loaded once and shared by the cells."""
    from interp.model.load import load_model

    key = (spec, str(device), dtype, tokenizer, letter_ids)
    kwargs = {"device": device, "dtype": dtype, "tokenizer": tokenizer, "letter_ids": letter_ids}
    if not cache:
        return load_model(spec, **kwargs)
    if key not in _CACHE:
        _CACHE[key] = load_model(spec, **kwargs)
    return _CACHE[key]


def cell_config(budget: str, name: str, seed: int, retain_drop: float):
    """An attack's config in this budget, with the audit's seed and retain floor."""
    cfg = audit_budget(budget).attacks[name]
    fields = vars(cfg)
    if "seed" in fields:
        cfg = replace(cfg, seed=seed)
    if "retain_drop" in fields:
        cfg = replace(cfg, retain_drop=retain_drop)
    return cfg


def audit_cell(original_spec: str, unlearned_spec: str, out: Path, budget: str, seed: int,
               retain_drop: float, device, progress: bool, cache: bool, name: str,
               dtype: str | None = None, tokenizer: str | None = None,
               letter_ids: str | None = None) -> dict:
    """One attack of an audit ("none": the no-attack scores), or its result read back when
    finished. Loads what it needs, so any process (a Ray worker included) can run it."""
    from interp.scoring import evaluate

    out = Path(out)
    marker = out / "cells" / f"{name}.json"
    if marker.is_file():
        return read_json(marker)
    data = out / "data"
    original = _load(original_spec, device, cache, dtype, tokenizer, letter_ids)
    unlearned = _load(unlearned_spec, device, cache, dtype, tokenizer, letter_ids)
    start = time.perf_counter()
    if name == "none":
        from interp.data.folder import DataFolder
        from interp.results import bits

        folder = DataFolder(data)

        def acc(model, name):
            qs = folder.questions(name, limit=audit_budget(budget).eval_limit)
            res = evaluate(model, qs, progress=False, batch_size=32)
            return {"accuracy": res.accuracy, "n": len(qs), "correct": bits(res.correct)}

        splits = ("forget", "retain") + (("control",) if folder.has("control_test") else ())
        result = {m: {s: acc(model, f"{s}_test") for s in splits}
                  for m, model in (("original", original), ("unlearned", unlearned))}
        result["unlearned_val"] = {s: acc(unlearned, f"{s}_val") for s in ("forget", "retain")}
    elif name in registry():
        r = registry()[name].run(unlearned, data, cell_config(budget, name, seed, retain_drop),
                                 original=original, out=out / "attacks" / name,
                                 progress=progress)
        result = r.to_json()
    else:
        raise InterpError(f"unknown audit cell {name!r}; one of {audit_cells(budget)}")
    cell = {"result": result, "seconds": round(time.perf_counter() - start, 1)}
    write_json(marker, cell)
    return cell


AUDIT_SETTINGS = "settings.json"


def questions_digest(forget: list[Question], retain: list[Question]) -> str:
    """A fingerprint of the questions an audit runs on (any change: another digest)."""
    import hashlib
    import json

    text = json.dumps([[q.to_json() for q in forget], [q.to_json() for q in retain]],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def same_audit_settings(out: Path, now: dict, configs: dict) -> None:
    """An audit folder is reused only for the same models, budget, questions and scoring
    settings, and only where every finished cell was computed with the config it has now; else
    one line names the difference. A finished folder from before settings were kept is refused
    too: nothing says what it was computed with."""
    if (out / "audit.json").is_file() and not (out / AUDIT_SETTINGS).is_file():
        raise InterpError(f"{out} holds an audit without its settings ({AUDIT_SETTINGS}); "
                          "use a new --out folder")
    same_settings(out / AUDIT_SETTINGS, now, out, write=False)
    for name, cfg in configs.items():
        marker = out / "cells" / f"{name}.json"
        if not marker.is_file():
            continue
        saved = read_json(marker)["result"].get("config")
        differ = config_differences(cfg, saved) if isinstance(saved, dict) else []
        if differ:
            raise InterpError(f"the {name} cell in {out} was computed with other settings: "
                              f"{', '.join(differ[:3])}; use a new --out folder")


def audit_cells(budget: str) -> list[str]:
    """The audit's cells for a budget: "none" (the no-attack scores), then every attack the budget
    runs."""
    return ["none", *audit_budget(budget).attacks]


def none_rows(none: dict, eval_limit: int | None) -> list:
    """The no-attack rows of the original and the unlearned model, with their per-question
    correctness (forget and control)."""
    from interp.results import Row

    out = []
    for model, splits in (("original", none["original"]), ("unlearned", none["unlearned"])):
        for split, m in splits.items():
            keep = split != "retain" and m.get("correct")
            out.append(Row(model=model, attack="none", split=split, format="any", mode="raw",
                           accuracy=m["accuracy"], n=m["n"],
                           correct=m.get("correct") if keep else None,
                           questions=f"{split}_test" if keep else None))
    return out


def attack_lines(results: dict, none: list | None = None, data: Path | None = None
                 ) -> list[dict]:
    """Per attack the table shows (its raw-mode rows that fill a column): the forget accuracy
    (GCG's on the held-out forget questions) and the retain accuracy beside it; with the
    no-attack rows and the data folder, the control, Δcontrol, the † mark and the recovered
    share with its entity-bootstrap interval (`interp.pipelines.controls`)."""
    from dataclasses import replace as _replace

    rows = [r for res in results.values() for r in res.rows("unlearned") if r.mode == "raw"]
    if none is not None and data is not None:
        from interp.pipelines.controls import annotate, entities_reader

        fmt = next((r.format for r in rows), "cloze")
        rows = annotate([_replace(r, format=fmt) for r in none] + rows, entities_reader(data))
        rows = [r for r in rows if r.attack != "none"]
    retain = {r.attack: r for r in rows if r.split == "retain"}
    control = {r.attack: r for r in rows if r.split == "control"}
    forget = {r.attack: r for r in rows if r.column and r.split in ("forget", "forget-heldout")}
    lines = []
    for attack, r in forget.items():
        label = (f"{attack} (held-out forget)" if r.split == "forget-heldout"
                 else f"{attack} ({r.note})" if r.note else attack)
        rr = retain.get(attack)
        rc = control.get(attack)
        lines.append({"attack": label, "forget": r.accuracy, "n_forget": r.n,
                      "forget_ci": list(r.ci), "retain": rr.accuracy if rr else None,
                      "val_forget": r.val, "n_val": r.n_val,
                      "val_retain": rr.val if rr else None,
                      "control": rc.accuracy if rc else None, "n_control": rc.n if rc else None,
                      "d_control": r.d_control, "supplied": r.supplied,
                      "recovered": r.recovered,
                      "recovered_ci": list(r.recovered_ci) if r.recovered_ci else None})
    return lines


def best_on_val(attacks: list[dict], val_retain_floor: float) -> dict | None:
    """The attack with the best validation forget accuracy among those that measured one and
    kept validation retain accuracy above the floor (its reported numbers are on test)."""
    usable = [x for x in attacks if x["val_forget"] is not None
              and (x["val_retain"] is None or x["val_retain"] >= val_retain_floor)]
    return max(usable, key=lambda x: x["val_forget"]) if usable else None


def audit(original_spec: str, unlearned_spec: str, forget: list[Question],
          retain: list[Question], out: Path, *, budget: str = "quick", seed: int = 0,
          retain_drop: float = 0.10, device=None, progress: bool = True,
          executor: str = "serial", address: str | None = None, dtype: str | None = None,
          tokenizer: str | None = None, letter_ids: str | None = None,
          control: list[Question] | None = None) -> dict:
    """Every attack on (original, unlearned); each attack is a resumable cell, run serially in
    this process or as Ray tasks (`executor="ray"`, `address=` a cluster or None for local).
    `control`: the user's own never-known questions (else `interp.data.control`'s rotated
    questions the original gets wrong)."""
    from functools import partial

    from interp.model.load import resolve_device
    from interp.pipelines.executors import stage_runner

    if budget not in AUDIT_LIMITS:
        raise InterpError(f"unknown budget {budget!r}; use one of {sorted(AUDIT_LIMITS)}")
    out = Path(out)
    names = audit_cells(budget)
    settings = {
        "original": original_spec, "unlearned": unlearned_spec, "budget": budget, "seed": seed,
        "retain_drop": retain_drop, "dtype": dtype, "tokenizer": tokenizer,
        "letter_ids": letter_ids,
        "questions": questions_digest(forget, retain + list(control or [])),
        "attacks": names[1:]}
    # checked before anything is written; kept once the questions are laid out (bad input first)
    same_audit_settings(out, settings, {n: cell_config(budget, n, seed, retain_drop)
                                        for n in names[1:]})
    if (out / "audit.json").is_file():
        return read_json(out / "audit.json")
    run_stage = stage_runner(executor, address, gpu=resolve_device(device).type == "cuda")
    prepare_data(forget, retain, out / "data", original_spec, seed)
    if not (out / "data" / "control_test.jsonl").is_file():
        from interp.data.control import write_audit_control

        about = write_audit_control(
            out / "data", None if control else _load(original_spec, device, executor == "serial",
                                                     dtype, tokenizer, letter_ids), control, seed)
        write_json(out / "data" / "control.json", about)
    same_settings(out / AUDIT_SETTINGS, settings, out)  # written now
    ship_plotlyjs(out)  # one copy for every figure of the audit (they open offline)
    t0 = time.perf_counter()
    fn = partial(audit_cell, original_spec, unlearned_spec, out, budget, seed, retain_drop,
                 device, progress, executor == "serial", dtype=dtype, tokenizer=tokenizer,
                 letter_ids=letter_ids)
    cells = dict(zip(names, run_stage(fn, names)))
    _CACHE.clear()
    base = {m: {s: v["accuracy"] for s, v in splits.items()}
            for m, splits in cells["none"]["result"].items()}
    results = {n: registry()[n].Result.from_json(cells[n]["result"]) for n in names[1:]}
    attacks = attack_lines(results, none_rows(cells["none"]["result"],
                                              audit_budget(budget).eval_limit), out / "data")
    floor = base["unlearned_val"]["retain"] - retain_drop
    best = best_on_val(attacks, floor)
    unmarked = best_on_val([a for a in attacks if not a.get("supplied")], floor)
    gap = base["original"]["forget"] - base["unlearned"]["forget"]
    headline = {
        "original_forget": base["original"]["forget"],
        "unlearned_forget": base["unlearned"]["forget"],
        "recoverable_forget": best["forget"] if best else None,
        "recoverable_forget_ci": best["forget_ci"] if best else None,
        "n_forget": best["n_forget"] if best else None,
        "best_attack": best["attack"] if best else None,
        "chosen_on": "validation split (forget accuracy, retain within the floor)",
        "recovered_fraction": (None if best is None or gap <= 0 else
                               (best["forget"] - base["unlearned"]["forget"]) / gap),
        "retain_floor": floor,
        "recovered_share": best.get("recovered") if best else None,
        "recovered_share_ci": best.get("recovered_ci") if best else None,
        "best_supplied": bool(best.get("supplied")) if best else None,
        # the best attack whose control stayed at or below the original's (no †), chosen the
        # same way: the recovery the controls do not put in doubt
        "best_unmarked_attack": unmarked["attack"] if unmarked else None,
        "best_unmarked_forget": unmarked["forget"] if unmarked else None,
        "best_unmarked_forget_ci": unmarked["forget_ci"] if unmarked else None,
        "best_unmarked_recovered_share": unmarked.get("recovered") if unmarked else None,
        "best_unmarked_recovered_share_ci": unmarked.get("recovered_ci") if unmarked else None,
        "control": {m: base[m].get("control") for m in ("original", "unlearned")},
    }
    none = cells["none"]["result"]["unlearned"]
    result = {"original": original_spec, "unlearned": unlearned_spec, "budget": budget,
              "seed": seed, "executor": executor, "n_forget_test": none["forget"]["n"],
              "n_retain_test": none["retain"]["n"], "no_attack": base, "attacks": attacks,
              "headline": headline,
              "config": {n: to_jsonable(cell_config(budget, n, seed, retain_drop))
                         for n in names[1:]},
              "timings": {k: v["seconds"] for k, v in cells.items()},
              "seconds": round(time.perf_counter() - t0, 1)}
    figures = [str(out / "attacks" / n / f) for n, r in results.items() for f in r.figures]
    atomic_write_text(out / "report.html", audit_html(result, figures, out))
    write_json(out / "audit.json", result)
    return result


def summary_lines(r: dict) -> list[str]:
    """What `interp audit` prints: the no-attack forget accuracy, a line per attack (with its
    control and † where measured), the recoverable knowledge and the best attack without †."""
    h = r["headline"]
    lines = [f"forget accuracy: original {h['original_forget']:.3f}, unlearned "
             f"{h['unlearned_forget']:.3f}"]
    for a in r["attacks"]:
        retain = "" if a["retain"] is None else f" retain {a['retain']:.3f}"
        control = "" if a.get("control") is None else f" control {a['control']:.3f}"
        mark = " † (supplied: control above the original's)" if a.get("supplied") else ""
        lines.append(f"  {a['attack']}: forget {a['forget']:.3f}{retain}{control}{mark}")
    if h["recoverable_forget"] is not None:
        low, high = h["recoverable_forget_ci"]
        lines.append(f"recoverable knowledge: {h['recoverable_forget']:.3f} [{low:.3f}, "
                     f"{high:.3f}] on {h['n_forget']} test questions ({h['best_attack']}, "
                     "chosen on validation)")
    if h.get("best_unmarked_attack") and h["best_unmarked_attack"] != h["best_attack"]:
        low, high = h["best_unmarked_forget_ci"]
        lines.append(f"best attack without †: {h['best_unmarked_forget']:.3f} [{low:.3f}, "
                     f"{high:.3f}] ({h['best_unmarked_attack']})")
    return lines
