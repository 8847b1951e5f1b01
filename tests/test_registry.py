"""The one registry every stage reads: names written only where they belong, plugins that reach
every stage and process, and the module shape checked at registration."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

import interp
from interp.errors import InterpError
from interp.registry import REGISTRIES, check_module, register, unregister

PACKAGE = Path(interp.__file__).parent
PLUGINS = Path(__file__).parent / "plugins"
# where a name may be written besides its own module: the scales (presets.py) and the package
# metadata that lists the built-ins (pyproject.toml, not a module)
ALLOWED = {"pipelines/presets.py"}


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_names_are_written_only_in_their_own_module_and_the_presets():
    owners = {name: Path(r.get(name).__file__).resolve()
              for r in REGISTRIES.values() for name in r.names()}
    assert {"rmu", "npo", "dpo", "finetune", "directions", "lens", "gcg", "prune"} <= set(owners)
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ALLOWED:
            continue
        for line, value in _string_constants(path):
            if value in owners and owners[value] != path.resolve():
                found.append(f"{rel}:{line}: {value!r}")
    assert not found, "a protection's or attack's name outside its module:\n" + "\n".join(found)


def test_the_name_check_would_catch_a_name(tmp_path):
    """The check above reads string constants (a docstring that mentions a name is not one)."""
    module = tmp_path / "m.py"
    module.write_text('"""About rmu."""\nX = {"rmu": 1}\n')
    assert [v for _, v in _string_constants(module)] == ["About rmu.", "rmu"]


def test_listing_names_imports_no_module():
    import subprocess
    import sys

    code = ("import sys, interp; from interp.registry import REGISTRIES; "
            "names = [n for r in REGISTRIES.values() for n in r.names()]; "
            "loaded = [m for m in sys.modules if m.startswith(('interp.attacks', "
            "'interp.protections'))]; print(len(names), loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(" ", 1)
    assert int(out[0]) >= 8 and out[1].strip() == "[]"


def test_a_module_without_the_shape_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "half_attack.py"
    bad.write_text("from interp.attacks.base import AttackSpec\n"
                   "SPEC = AttackSpec('half', order=1)\n"
                   "class Config: pass\n")
    with pytest.raises(InterpError, match=r"is not an attack module: it has no Result, run"):
        register(str(bad))
    assert "half" not in REGISTRIES["attack"].names(plugins=False)
    other = tmp_path / "no_spec.py"
    other.write_text("X = 1\n")
    with pytest.raises(InterpError, match="neither an attack nor a protection"):
        register(str(other))


def test_the_toys_have_the_shape_of_their_kind():
    from interp.registry import import_plugin

    attack = import_plugin(str(PLUGINS / "zero_mlp.py"))
    protection = import_plugin(str(PLUGINS / "noise_mlp.py"))
    assert check_module(attack, "attack") is attack
    assert check_module(protection, "protection") is protection
    with pytest.raises(InterpError, match="declares an attack, not a protection"):
        check_module(attack, "protection")


def test_register_reaches_the_processes_a_run_starts(monkeypatch):
    import os

    from interp.registry import PLUGINS_ENV

    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    path = str((PLUGINS / "zero_mlp.py").resolve())
    register(path)
    try:
        assert os.environ[PLUGINS_ENV] == path
        assert "zero-mlp" in interp.attack_registry()
        assert interp.__getattr__("zero-mlp").SPEC.name == "zero-mlp"
    finally:
        unregister("zero-mlp")
    assert os.environ[PLUGINS_ENV] == ""
    assert "zero-mlp" not in interp.attack_registry()


# ------------------------------------------------------------- the toys through every stage
def test_the_toys_run_through_reproduce(smoke_run, toy_run):
    """No edit but the plugin: the toy protection is trained and attacked by every attack, the
    toy attack runs on every model, chooses on validation, and every other row is unchanged."""
    run, summary = toy_run
    rows = summary["rows"]
    old = smoke_run[1]["rows"]
    assert [r for r in rows if "noise-mlp" not in (r["model"], r["attack"])
            and r["attack"] != "zero-mlp"] == old
    attacked = {r["attack"] for r in rows if r["model"] == "noise-mlp"}
    assert attacked >= {"none", "zero-mlp", "lens", "gcg", "prune", "orthogonalize"}
    toy = [r for r in rows if r["attack"] == "zero-mlp" and r["split"] == "forget"]
    assert {r["model"] for r in toy} == {"rmu", "npo", "dpo", "noise-mlp"}
    assert all(r["val"] is not None and r["n_val"] > 0 for r in toy)  # chosen on validation
    result = json.loads((run / "attacks" / "rmu" / "zero-mlp" / "result.json").read_text())
    layer = max(range(len(result["val_per_layer"])), key=result["val_per_layer"].__getitem__)
    assert result["best_layer"] == layer
    assert "zero MLP" in (run / "table.md").read_text()
    assert "| noise-mlp |" in (run / "table.md").read_text()
    assert (run / "models" / "noise-mlp" / "protection.json").is_file()
    compare = json.loads((run / "attacks" / "compare" / "result.json").read_text())
    assert any("noise-mlp" in pair for pair in compare["direction_cosine"])  # redone


def test_the_toy_attack_runs_through_the_audit(smoke_audit, toy_plugins, tmp_path):
    """The audit's quick budget gains the toy (its `SPEC.budgets`); the old folder is refused
    (its attacks differ), a copy without its settings computes only the new cell."""
    from interp.pipelines.audit import audit

    _, folder, forget, retain, serial = smoke_audit
    with pytest.raises(InterpError, match="attacks="):
        audit(serial["original"], serial["unlearned"], forget, retain, folder,
              budget="quick", progress=False)
    copy = tmp_path / "audit"
    shutil.copytree(folder, copy)
    (copy / "settings.json").unlink()
    (copy / "audit.json").unlink()
    again = audit(serial["original"], serial["unlearned"], forget, retain, copy,
                  budget="quick", progress=False)
    assert [a for a in again["attacks"] if not a["attack"].startswith("zero-mlp")] == \
        serial["attacks"]
    toy = [a for a in again["attacks"] if a["attack"].startswith("zero-mlp")]
    assert len(toy) == 1 and toy[0]["val_forget"] is not None
    assert set(again["timings"]) == {*serial["timings"], "zero-mlp"}


def test_the_toys_are_counted_and_probed_by_plan(toy_plugins, monkeypatch, tmp_path):
    from interp.cost import Sizes
    from interp.pipelines.plan import PlanConfig, count_steps, plan, step_kinds
    from interp.pipelines.presets import PRESETS

    smoke = PRESETS["smoke"]
    assert "noise-mlp" in smoke.protections and "zero-mlp" in smoke.attacks
    sizes = Sizes(forget_train=10, forget_test=50, retain_train=10, retain_test=30,
                  unrelated=5, n_layers=4, forget_val=20, retain_val=10)
    counts = count_steps(smoke, sizes)
    toy = interp.attack_registry()["zero-mlp"]
    assert counts["score"]["zero-mlp on rmu"] == toy.cost(smoke.attacks["zero-mlp"], sizes)[
        "score"] == 4 * 20 + 10 + 20 + 2 * (40 + 30)
    assert "noise-mlp: protect" in counts["score"]  # its before/after scores
    assert step_kinds(smoke).uncounted == []
    monkeypatch.delattr(toy, "cost")
    only_toys = type(smoke)(name="smoke", data="smoke",
                            protections={"noise-mlp": smoke.protections["noise-mlp"]},
                            attacks={"zero-mlp": smoke.attacks["zero-mlp"]})
    result = plan(PlanConfig(preset="smoke", shape="tiny", device="cpu", probe_steps=2,
                             forget=40, retain=40), tmp_path / "plan.json", progress=False,
                  preset=only_toys)
    stages = {s.stage: s for s in result.stages}
    assert stages["score"].seconds_per_step > 0 and "noise-mlp: protect" in \
        stages["score"].counted
    assert "not counted" in stages["zero-mlp"].note and not result.all_fit


def test_the_toys_run_from_the_command_line(smoke_run, tmp_path):
    """`interp --plugin FILE ...` in a new process: the toy protection trains, the toy attack
    runs; a missing plugin is one line and exit 2."""
    import subprocess
    import sys

    run, _ = smoke_run
    cli = [sys.executable, "-m", "interp.cli", "--plugin", str(PLUGINS / "noise_mlp.py"),
           "--plugin", str(PLUGINS / "zero_mlp.py")]
    model = str(run / "data" / "model")
    out = subprocess.run([*cli, "protect", "noise-mlp", "--model", model, "--data",
                          str(run / "data"), "--out", str(tmp_path / "noisy"), "--preset",
                          "smoke", "--scale", "0.25"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "noisy" / "protection.json").read_text())
    assert saved["config"]["scale"] == 0.25
    out = subprocess.run([*cli, "attack", "zero-mlp", "--model", f"rmu={run / 'models' / 'rmu'}",
                          "--data", str(run / "data"), "--out", str(tmp_path / "zero"),
                          "--limit", "12"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "rmu zero-mlp forget raw" in out.stdout
    assert json.loads((tmp_path / "zero" / "result.json").read_text())["config"]["limit"] == 12
    out = subprocess.run([sys.executable, "-m", "interp.cli", "--plugin", "no/such.py", "plan",
                          "--out", str(tmp_path / "p.json")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == \
        "interp: error: plugin no/such.py does not exist"
