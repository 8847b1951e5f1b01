"""The smoke reproduction end to end, checked against independent recomputation; the notebooks
run on it with a real Jupyter kernel; a finished run is not recomputed; the audit on two of its
models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interp.data.questions import load_questions
from interp.model.load import load_model
from interp.model.state import copy_model
from interp.pipelines.reproduce import reproduce
from interp.scoring import evaluate

ROW_KEYS = {"model", "attack", "split", "format", "mode", "accuracy", "n", "ci", "ci_kind"}
OPTIONAL = {"column", "note", "val", "n_val", "correct", "questions", "reference", "recovered",
            "recovered_ci", "d_control", "supplied"}


def test_results_schema_and_coverage(smoke_run):
    run, summary = smoke_run
    data = json.loads((run / "results.json").read_text())
    assert data["preset"] == "smoke" and data["seed"] == 0
    # the fixture reused the session's benchmark and protections: only computed stages are timed
    from interp.pipelines.presets import PRESETS

    assert set(data["timings"]) == set(PRESETS["smoke"].attacks) | {"compare"}
    rows = data["rows"]
    assert all(ROW_KEYS <= set(r) <= ROW_KEYS | OPTIONAL for r in rows)
    assert {r["model"] for r in rows} == {"original", "rmu", "npo", "dpo"}
    attacks = {r["attack"] for r in rows}
    for a in ("none", "orthogonalize", "lens", "gcg", "prune", "finetune-unrelated-n10",
              "finetune-unrelated-n50", "finetune-forget-k3", "finetune-forget-k6"):
        assert a in attacks, a
    assert {r["mode"] for r in rows} == {"raw", "chat"}
    assert {r["format"] for r in rows} == {"cloze", "letter"}
    assert all(0 <= r["accuracy"] <= 1 and r["n"] > 0 for r in rows)
    assert all(0 <= r["ci"][0] <= r["accuracy"] <= r["ci"][1] <= 1 for r in rows)
    table = (run / "table.md").read_text()
    assert all(f"| {m} |" in table for m in ("original", "rmu", "npo", "dpo"))
    from interp.stats import wilson

    orth = _row(rows, model="rmu", attack="orthogonalize", split="forget", mode="raw")
    assert orth["ci_kind"] == "entity bootstrap"  # the row kept its per-question correctness
    low, high = (100 * x for x in orth["ci"])
    assert f"{100 * orth['accuracy']:.1f} [{low:.1f}, {high:.1f}]" in table
    letter = _row(rows, model="rmu", attack="none", split="forget", format="letter", mode="raw")
    low, high = (100 * x for x in wilson(letter["accuracy"], letter["n"]))
    assert letter["ci_kind"] == "wilson"
    assert letter["ci"] == pytest.approx([low / 100, high / 100])
    pngs = list((run / "readme-figures").glob("*.png"))
    names = " ".join(p.name for p in pngs)
    for key in ("lens", "ablation_sweep", "finetune", "gcg", "grid", "neuron_jaccard",
                "direction_cosine", "all_directions", "all_finetune", "all_gcg", "all_lens",
                "finetune_curve", "gcg_curve", "all_finetune_curve_unrelated",
                "all_finetune_curve_forget", "all_gcg_curve", "all_recovered_share",
                "icl", "quantize", "rephrase"):
        assert key in names, key
    # the run computed in this process: its logged peak is this process's peak at that time
    import resource

    now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert 100 < data["peak_rss_mb"] <= now + 1  # the log rounds to whole MB


def test_every_attack_and_baseline_scores_the_control(smoke_run):
    """The no-attack rows of every model (the original included) and every attack's rows carry
    the never-known control in the forget row's format and mode, with n and an interval, and the
    forget rows of the protected models their recovered share."""
    run, summary = smoke_run
    rows = summary["rows"]
    n_control = len((run / "data" / "control_test.jsonl").read_text().splitlines())
    controls = {(r["model"], r["attack"], r["format"], r["mode"]) for r in rows
                if r["split"] == "control"}
    for r in rows:
        if r["split"] in ("forget", "forget-heldout") and r["format"] == "cloze" \
                and not r["attack"].endswith("-none"):
            assert (r["model"], r["attack"], r["format"], r["mode"]) in controls, r["attack"]
    for r in (r for r in rows if r["split"] == "control"):
        assert 0 < r["n"] <= n_control and r["ci"][0] <= r["accuracy"] <= r["ci"][1]
        assert r["ci_kind"] == "entity bootstrap"
    for model in ("original", "rmu", "npo", "dpo"):
        assert (model, "none", "cloze", "raw") in controls
    shares = [r for r in rows if r["model"] != "original" and r["split"] == "forget"
              and r.get("column") and r["attack"] != "none" and r["mode"] == "raw"]
    assert shares and all("recovered" in r or "recovered_ci" not in r for r in shares)
    assert any(r.get("recovered_ci") for r in shares)
    assert all(r.get("supplied") in (True, False) for r in shares)
    table = (run / "table.md").read_text()
    assert "recovered share" in table and "Δcontrol" in table and "| control |" in table


def _row(rows, **kw):
    (match,) = [r for r in rows if all(r[k] == v for k, v in kw.items())]
    return match


def test_rows_match_independent_recomputation(smoke_run):
    run, summary = smoke_run
    rows = summary["rows"]
    forget = load_questions(run / "data" / "forget_test.jsonl")
    rmu = load_model(run / "models" / "rmu", device="cpu")
    # no attack: the saved protected model scored afresh
    acc = evaluate(rmu, forget, progress=False).accuracy
    assert _row(rows, model="rmu", attack="none", split="forget", format="cloze",
                mode="raw")["accuracy"] == pytest.approx(acc)
    # orthogonalization: the saved direction applied as a weight edit by hand, W <- W - r r^T W
    from safetensors.torch import load_file

    res = json.loads((run / "attacks" / "rmu" / "directions" / "result.json").read_text())
    r = load_file(str(run / "attacks" / "rmu" / "directions" / "directions.safetensors"))[
        "directions"][res["best_layer"]].double()
    r = r / r.norm()
    edited = copy_model(rmu)
    with torch.no_grad():
        proj = lambda w: (w.double() - (w.double() @ r)[..., None] * r).float()  # noqa: E731
        edited.embed.W_E.copy_(proj(edited.embed.W_E))
        for block in edited.blocks:
            block.attn.W_O.copy_(proj(block.attn.W_O))
            block.mlp.W_out.copy_(proj(block.mlp.W_out))
    acc = evaluate(edited, forget, progress=False).accuracy
    assert _row(rows, model="rmu", attack="orthogonalize", split="forget")[
        "accuracy"] == pytest.approx(acc, abs=1 / len(forget) + 1e-9)
    # GCG: the reported prefix scored afresh on the held-out questions
    g = json.loads((run / "attacks" / "npo" / "gcg" / "result.json").read_text())
    npo = load_model(run / "models" / "npo", device="cpu")
    train_entities = {q.meta["entity"] for q in
                      load_questions(run / "data" / "forget_train.jsonl")[: g["n_train"]]}
    held = [q for q in forget if q.meta["entity"] not in train_entities][:100]
    acc = evaluate(npo, held, prefix=g["prefix"], progress=False).accuracy
    assert _row(rows, model="npo", attack="gcg", split="forget-heldout", mode="raw")[
        "accuracy"] == pytest.approx(acc)


def test_a_finished_run_is_not_recomputed(smoke_run):
    run, summary = smoke_run
    log_lines = len((run / "run.log").read_text().splitlines())
    again = reproduce("smoke", run, device="cpu", progress=False)
    assert again["rows"] == summary["rows"]
    new = [json.loads(line) for line in (run / "run.log").read_text().splitlines()[log_lines:]]
    assert new and not any(e["ran"] for e in new), new  # every cell read back


def test_a_finished_cell_with_other_settings_is_refused(smoke_run):
    """A changed preset does not silently reuse cells computed with the old settings."""
    from dataclasses import replace

    from interp.errors import InterpError
    from interp.pipelines.presets import PRESETS

    run, _ = smoke_run
    log_lines = len((run / "run.log").read_text().splitlines())
    smoke = PRESETS["smoke"]
    gcg_cfg = smoke.attacks["gcg"]
    changed = replace(smoke, attacks={**smoke.attacks,
                                      "gcg": replace(gcg_cfg, steps=gcg_cfg.steps + 1)})
    with pytest.raises(InterpError, match=r"gcg.*other settings: steps="):
        reproduce(changed, run, device="cpu", progress=False)
    rmu_cfg = smoke.protections["rmu"]
    changed = replace(smoke, protections={**smoke.protections,
                                          "rmu": replace(rmu_cfg, lr=rmu_cfg.lr * 2)})
    with pytest.raises(InterpError, match=r"rmu/protect.*other settings: lr="):
        reproduce(changed, run, device="cpu", progress=False)
    # refused before any cell ran or was read back
    assert len((run / "run.log").read_text().splitlines()) == log_lines


def test_settings_added_since_compare_with_their_default():
    """A stored config from before a setting existed behaved as its default."""
    from interp.attacks import finetune
    from interp.attacks.base import to_jsonable
    from interp.model.lora import LoRAConfig
    from interp.pipelines.reproduce import config_differences

    saved = to_jsonable(finetune.Config())
    del saved["forget_batch_size"], saved["lora"]["impl"]
    assert config_differences(finetune.Config(), saved) == []
    assert config_differences(finetune.Config(forget_batch_size=1), saved) == [
        "forget_batch_size=None (now 1)"]
    assert config_differences(finetune.Config(lora=LoRAConfig(rank=8, alpha=16.0)), saved) == [
        "lora.rank=16 (now 8)"]


def test_same_seed_same_cell(smoke_protected, tmp_path):
    """Determinism: one smoke cell (pruning grid and a GCG run) twice gives identical JSON."""
    from interp.attacks import gcg, prune

    folder, out, _ = smoke_protected
    model = load_model(out / "dpo", device="cpu")
    drop = ("seconds", "figures", "candidates_per_second", "seconds_per_step")
    results = []
    for i in range(2):
        p = prune.run(model, folder, prune.Config(grid=(0.05, 0.2)), out=tmp_path / f"p{i}",
                      progress=False)
        g = gcg.run(model, folder, gcg.Config(n_tokens=4, steps=3, search_width=16, topk=8,
                                              progress=False, n_train=3),
                    out=tmp_path / f"g{i}")
        results.append([{k: v for k, v in r.to_json().items() if k not in drop}
                         for r in (p, g)])
    assert json.dumps(results[0], sort_keys=True) == json.dumps(results[1], sort_keys=True)


NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def moved_run(smoke_run, tmp_path_factory):
    """The smoke run copied elsewhere: the notebooks open it from notebooks/, a different
    working directory than the one it was made from."""
    import shutil

    run, _ = smoke_run
    moved = tmp_path_factory.mktemp("moved") / "run"
    shutil.copytree(run, moved)
    return moved


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, moved_run, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    run = moved_run
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # the committed outputs are the laptop run's: start clean
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    monkeypatch.setenv("INTERP_RUN", str(run))
    monkeypatch.setenv("INTERP_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the kernel runs alone: both cores
    monkeypatch.setenv("INTERP_NOTEBOOK_QUICK", "1")
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    assert any(tmp_path.glob("*.html"))


def test_audit_on_two_models_of_the_run(smoke_audit):
    _, folder, forget, _, r = smoke_audit
    h = r["headline"]
    assert h["original_forget"] > h["unlearned_forget"]
    # the best attack is chosen on validation (forget, with validation retain above the floor);
    # its number is the test one, with its interval
    best = max((a for a in r["attacks"] if a["val_forget"] is not None
                and (a["val_retain"] is None or a["val_retain"] >= h["retain_floor"])),
               key=lambda a: a["val_forget"])
    assert h["recoverable_forget"] == best["forget"] and h["best_attack"] == best["attack"]
    low, high = h["recoverable_forget_ci"]
    assert low <= h["recoverable_forget"] <= high and h["n_forget"] == r["n_forget_test"]
    assert h["retain_floor"] == pytest.approx(r["no_attack"]["unlearned_val"]["retain"] - 0.10)
    assert (folder / "report.html").read_text().count("<tr>") >= 5
    # the default control: forget questions the original gets wrong, choices rotated one place
    from interp.data.folder import DataFolder
    from interp.model.load import load_model
    from interp.scoring import evaluate

    data = DataFolder(folder / "data")
    original = load_model(r["original"], device="cpu")
    test = data.questions("forget_test")
    wrong = [q for q, ok in zip(test, evaluate(original, test, progress=False).correct.tolist())
             if not ok]
    # (the smoke original answers every forget question right: then the control is empty)
    control = data.questions("control_test") if data.has("control_test") else []
    assert [c.meta["id"] for c in control] == [q.meta.get("id") for q in wrong]
    assert all(c.choices == q.choices[-1:] + q.choices[:-1] for c, q in zip(control, wrong))
    if control:
        assert r["no_attack"]["original"]["control"] == \
            evaluate(original, control, progress=False).accuracy
    # the best attack overall and the best one without †, each chosen on validation
    unmarked = [a for a in r["attacks"] if not a.get("supplied") and a["val_forget"] is not None
                and (a["val_retain"] is None or a["val_retain"] >= h["retain_floor"])]
    if unmarked:
        pick = max(unmarked, key=lambda a: a["val_forget"])
        assert h["best_unmarked_attack"] == pick["attack"]
        assert h["best_unmarked_forget"] == pick["forget"]
    assert all("control" in a and "recovered" in a for a in r["attacks"])
    # the unrelated finetuning data of an audit names no forget answer
    from interp.attacks.finetune import unrelated_samples

    answers = {q.choices[q.answer] for q in forget}
    for text in unrelated_samples(folder / "data", 50, seed=0):
        assert not any(f" {a} " in f" {text} " for a in answers if len(a) > 3)


def test_audit_takes_the_users_control(smoke_run, tmp_path):
    """`--control FILE`: the user's own never-known questions, split by entity into val and test,
    scored by every attack."""
    import subprocess
    import sys

    from interp.data.folder import DataFolder

    run, _ = smoke_run
    data = DataFolder(run / "data")
    mine = tmp_path / "mine.jsonl"
    mine.write_text((run / "data" / "control_test.jsonl").read_text()
                    + (run / "data" / "control_val.jsonl").read_text())
    forget, retain = tmp_path / "f.jsonl", tmp_path / "r.jsonl"
    forget.write_text((run / "data" / "forget_test.jsonl").read_text())
    retain.write_text((run / "data" / "retain_test.jsonl").read_text())
    out = tmp_path / "audit"
    bad = subprocess.run([sys.executable, "-m", "interp.cli", "audit", "--original",
                          data.model_spec, "--unlearned", str(run / "models" / "npo"),
                          "--forget", str(forget), "--retain", str(retain), "--control",
                          str(tmp_path / "missing.jsonl"), "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    from interp.data.questions import load_questions
    from interp.pipelines.audit import audit

    r = audit(data.model_spec, str(run / "models" / "npo"), load_questions(forget),
              load_questions(retain), out, budget="quick", progress=False,
              control=load_questions(mine))
    ctrl = DataFolder(out / "data")
    got = ctrl.questions("control_val") + ctrl.questions("control_test")
    assert sorted(q.question for q in got) == sorted(q.question for q in load_questions(mine))
    assert not ({q.meta["entity"] for q in ctrl.questions("control_val")}
                & {q.meta["entity"] for q in ctrl.questions("control_test")})
    assert r["no_attack"]["unlearned"]["control"] is not None
    assert any(a["control"] is not None for a in r["attacks"])


def test_an_interrupted_audit_reruns_only_its_missing_attack(smoke_audit, tmp_path):
    import shutil

    from interp.pipelines.audit import audit

    run, folder, forget, retain, first = smoke_audit
    copy = tmp_path / "audit"
    shutil.copytree(folder, copy)
    (copy / "audit.json").unlink()           # as if killed before the end, during GCG
    (copy / "cells" / "gcg.json").unlink()
    shutil.rmtree(copy / "attacks" / "gcg")
    kept = {f.name: f.stat().st_mtime_ns for f in (copy / "cells").iterdir()}
    again = audit(first["original"], first["unlearned"], forget, retain, copy, budget="quick",
                  progress=False)
    assert {f.name: f.stat().st_mtime_ns for f in (copy / "cells").iterdir()
            if f.name != "gcg.json"} == kept
    assert (copy / "cells" / "gcg.json").is_file()
    assert again["attacks"] == first["attacks"] and again["headline"] == first["headline"]


def test_choices_on_validation_numbers_on_test(smoke_run):
    """Every choice an attack makes is made on the validation split (entities disjoint from the
    test split the rows report and from the training side), and the forget samples of `ft
    forget-kK` name training entities only."""
    from interp.data.folder import DataFolder

    run, summary = smoke_run
    data = DataFolder(run / "data")
    ents = {name: {q.meta["entity"] for q in data.questions(name)}
            for name in ("forget_train", "forget_val", "forget_test")}
    assert not (ents["forget_val"] & ents["forget_test"])
    assert not (ents["forget_train"] & (ents["forget_val"] | ents["forget_test"]))
    n_val, n_test = len(data.questions("forget_val")), len(data.questions("forget_test"))
    for m in ("rmu", "npo", "dpo"):
        a = run / "attacks" / m
        d = json.loads((a / "directions" / "result.json").read_text())
        assert d["sweep"]["n_forget"] == n_val and d["no_attack"]["n_forget"] == n_test
        best = max((i for i, v in enumerate(d["diff_norms"]) if v > 0),
                   key=lambda i: (d["sweep"]["forget"][i], d["sweep"]["retain"][i]))
        assert d["best_layer"] == best  # the argmax of the validation sweep
        f = json.loads((a / "finetune" / "result.json").read_text())
        for cell in f["cells"].values():
            assert set(cell["trained_entities"]) <= ents["forget_train"]
            assert len(cell["trained_entities"]) == (
                cell["size"] if cell["kind"] in ("forget", "shuffled") else 0)
            assert cell["curve"][-1]["step"] == cell["steps"]
            assert cell["curve"][-1]["forget"] == cell["forget"]
        g = json.loads((a / "gcg" / "result.json").read_text())
        chosen = max(g["val_per_step"], key=lambda h: (h["accuracy"], h["step"]))
        assert g["chosen_step"] == chosen["step"] and g["prefix_ids"] == chosen["prefix_ids"]
        assert g["n_val"] == n_val and g["n_test"] == n_test
        p = json.loads((a / "prune" / "result.json").read_text())
        assert p["n_val_forget"] == n_val and p["no_attack"]["n_forget"] == n_test
    rows = summary["rows"]
    with_val = [r for r in rows if r.get("val") is not None]
    assert {r["attack"] for r in with_val} >= {"orthogonalize", "ablate-best-layer", "lens",
                                                 "gcg", "prune", "finetune-forget-k6"}


def test_rows_do_not_depend_on_the_thread_count(smoke_run, tmp_path):
    """The RMU model's attacks (all five kinds) again in another process with one thread
    (OMP_NUM_THREADS=1; the fixture computed with the default two): every row identical."""
    import os
    import shutil
    import subprocess
    import sys

    run, summary = smoke_run
    again = tmp_path / "run"
    shutil.copytree(run, again)
    shutil.rmtree(again / "attacks" / "rmu")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "interp.cli", "reproduce", "--preset", "smoke",
                    "--out", str(again), "--device", "cpu"], check=True, env=env,
                   capture_output=True)
    rows = json.loads((again / "results.json").read_text())["rows"]
    assert rows == summary["rows"]
