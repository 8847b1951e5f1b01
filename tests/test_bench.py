"""`interp bench` without timing anything: the harness sees exactly our prompt, results are
oriented and tabled as documented (a bad name is a case of test_bad_input), and the peers are found
where `make bench-peers` puts them, never installed at run time."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
import yaml

from benchmarks import common, nanogcg_env
from benchmarks.common import BenchResult
from benchmarks.gcg import bench_gcg, gcg_vs_nanogcg
from benchmarks.harness import bench_lm_eval, lm_eval_doc, lm_eval_task
from benchmarks.report import markdown
from benchmarks.run import BENCHMARKS
from interp.data.sources import load_source
from interp.prompts import letter_prompt


def test_the_harness_task_renders_our_letter_prompt(tmp_path):
    task = yaml.safe_load(lm_eval_task(tmp_path / "q.jsonl"))
    assert task["output_type"] == "multiple_choice"
    assert task["doc_to_choice"] == ["A", "B", "C", "D"]
    template = jinja2.Template(task["doc_to_text"])
    qs = load_source("bank:capitals:1")[:3] + load_source("bank:elements:1")[:3]
    assert {q.subject for q in qs} != {""}
    for q in qs:
        doc = lm_eval_doc(q)
        assert template.render(**doc) == letter_prompt(q)
        assert doc["answer"] == q.answer


def test_ratio_orientation_and_table():
    faster = common.row("x", 30.0, 10.0, "questions/s", 3.0, 2.0)
    slower = common.row("y", 5.0, 10.0, "questions/s", 0.5, 0.9)
    skipped = common.row("z", None, None, "questions/s", None, 2.0, skipped="not installed")
    assert (faster.met, slower.met, skipped.met) == (True, False, None)
    table = markdown({"benchmarks": [vars(b) for b in (faster, slower, skipped)]})
    lines = table.strip().splitlines()
    assert len(lines) == 5
    assert lines[2].endswith("| yes |") and lines[3].endswith("| no |")
    assert lines[4].endswith("| skipped |")
    assert isinstance(faster, BenchResult)



# ---------------------------------------------------------------- peers: found, never installed
def _forbid_installing(monkeypatch):
    """Make every way of creating an environment or installing a package fail loudly."""
    import subprocess
    import venv

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to run or install something: {args!r}")

    for name in ("run", "Popen", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, refuse)
    monkeypatch.setattr(os, "system", refuse)
    monkeypatch.setattr(venv, "create", refuse)
    monkeypatch.setattr(venv.EnvBuilder, "create", refuse)
    monkeypatch.setitem(sys.modules, "pip", None)  # `import pip` raises ImportError


def _python_seeing(tmp_path: Path, package_body: str, name: str = "python") -> Path:
    """An executable that is this interpreter with a package `nanogcg` (of `package_body`) on its
    path: it can import nanogcg exactly when that body imports without error."""
    lib = tmp_path / "lib"
    (lib / "nanogcg").mkdir(parents=True, exist_ok=True)
    (lib / "nanogcg" / "__init__.py").write_text(package_body)
    script = tmp_path / name
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(lib))} "
                      f"exec {shlex.quote(sys.executable)} \"$@\"\n")
    script.chmod(0o755)
    return script


def test_no_nanogcg_environment_is_none_and_installs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(nanogcg_env.NANOGCG_ENV, raising=False)
    _forbid_installing(monkeypatch)
    assert nanogcg_env.nanogcg_python() is None
    py, why = nanogcg_env.find_nanogcg()
    assert py is None and ".venv-nanogcg/bin/python" in why
    assert list(tmp_path.iterdir()) == []  # no environment was created here


def test_a_missing_env_var_interpreter_is_none_and_installs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(nanogcg_env.NANOGCG_ENV, str(tmp_path / "nowhere" / "python"))
    _forbid_installing(monkeypatch)
    py, why = nanogcg_env.find_nanogcg()
    assert py is None and nanogcg_env.NANOGCG_ENV in why
    assert list(tmp_path.iterdir()) == []


def _record_runs(monkeypatch) -> list:
    import subprocess

    calls, real = [], subprocess.run

    def run(args, *a, **kw):
        calls.append(list(args))
        return real(args, *a, **kw)

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_the_env_var_interpreter_is_used_when_it_imports_nanogcg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = _python_seeing(tmp_path / "good", "VERSION = 'fake'\n")
    monkeypatch.setenv(nanogcg_env.NANOGCG_ENV, str(good))
    calls = _record_runs(monkeypatch)
    assert nanogcg_env.find_nanogcg() == (str(good), "")
    assert calls == [[str(good), "-c", "import nanogcg"]]  # only the check; no pip, no venv


def test_an_interpreter_that_cannot_import_nanogcg_is_not_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    broken = _python_seeing(tmp_path / "broken", "raise ImportError('not this one')\n")
    monkeypatch.setenv(nanogcg_env.NANOGCG_ENV, str(broken))
    calls = _record_runs(monkeypatch)
    py, why = nanogcg_env.find_nanogcg()
    assert py is None and "cannot import nanogcg" in why and nanogcg_env.NANOGCG_ENV in why
    assert calls == [[str(broken), "-c", "import nanogcg"]]


def test_the_default_is_venv_nanogcg_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(nanogcg_env.NANOGCG_ENV, raising=False)
    real = _python_seeing(tmp_path, "", name="real-python")
    venv_python = tmp_path / ".venv-nanogcg" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(real)  # as in a venv: bin/python links to the base interpreter
    # the venv's own path, not the resolved link (which would run outside the environment)
    assert nanogcg_env.nanogcg_python() == str(venv_python)


def _explicit_command(detail: str) -> str:
    assert "make bench-peers" in detail
    return detail.split("(or: ", 1)[1].removesuffix(")")


def test_a_skipped_gcg_row_names_the_install_command_and_keeps_our_speed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(nanogcg_env.NANOGCG_ENV, raising=False)
    _forbid_installing(monkeypatch)
    ours = SimpleNamespace(candidates_per_second=123.0, losses=[2.0, 1.5])  # as run_gcg returns
    r = gcg_vs_nanogcg(load_source("bank:capitals:1")[0], ours, steps=5, width=128, topk=64,
                       n_tokens=10)
    assert (r.ours, r.peer, r.ratio, r.met) == (123.0, None, None, None)
    assert r.detail["ours_losses"] == [2.0, 1.5]
    cmd = _explicit_command(r.detail["skipped"])
    assert cmd == ("python3 -m venv .venv-nanogcg && .venv-nanogcg/bin/pip install "
                   "nanogcg==0.3.0 transformers==4.47.1 torch==2.13.0 gguf 'numpy<3' accelerate")
    make_venv, install = cmd.split(" && ")
    assert shlex.split(install)[:2] == [".venv-nanogcg/bin/pip", "install"]
    # the shell reads back the same list
    assert shlex.split(install)[2:] == nanogcg_env.NANOGCG_REQS
    row = markdown({"benchmarks": [vars(r)]}).strip().splitlines()[-1]
    assert row.startswith("| gcg-vs-nanogcg | 123 | – |") and row.endswith("| skipped |")


FAKE_NANOGCG = """
from types import SimpleNamespace
class GCGConfig:
    def __init__(self, **kw):
        self.__dict__.update(kw)
def run(model, tok, messages, target, cfg):
    assert messages[0]["content"].startswith("{optim_str} ") and model.gguf == tok.gguf
    return SimpleNamespace(losses=[float(cfg.num_steps), float(cfg.search_width), float(cfg.topk),
                                   float(len(cfg.optim_str_init.split()))], best_loss=0.5)
"""
FAKE_TRANSFORMERS = """
class _Loaded:
    def __init__(self, path, gguf_file, **kw):
        self.gguf = (path, gguf_file)
    def eval(self):
        return self
class AutoModelForCausalLM:
    from_pretrained = _Loaded
class AutoTokenizer:
    from_pretrained = _Loaded
"""


def test_the_nanogcg_peer_module_runs_in_its_interpreter_and_fills_the_row(tmp_path,
                                                                           monkeypatch):
    """The peer runs as `python -m benchmarks.peers.nanogcg_peer` in the nanoGCG interpreter
    (here one that sees fake nanogcg and transformers packages but not this checkout), from any
    working directory; its JSON line becomes the row."""
    lib = tmp_path / "lib"
    for name, body in (("nanogcg", FAKE_NANOGCG), ("transformers", FAKE_TRANSFORMERS)):
        (lib / name).mkdir(parents=True)
        (lib / name / "__init__.py").write_text(body)
    py = tmp_path / "nanogcg-python"
    py.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(lib))}:$PYTHONPATH "
                  f"exec {shlex.quote(sys.executable)} \"$@\"\n")
    py.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(nanogcg_env.NANOGCG_ENV, str(py))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    calls = _record_runs(monkeypatch)
    ours = SimpleNamespace(candidates_per_second=10.0, losses=[2.0])
    r = gcg_vs_nanogcg(load_source("bank:capitals:1")[0], ours, steps=3, width=4, topk=2,
                       n_tokens=5)
    assert "skipped" not in r.detail, r.detail.get("skipped")
    assert calls[-1][:3] == [str(py), "-m", "benchmarks.peers.nanogcg_peer"]
    assert r.detail["peer_losses"] == [3.0, 4.0, 2.0, 5.0]  # steps, width, topk, n_tokens
    assert (r.name, r.ours, r.unit) == ("gcg-vs-nanogcg", 10.0, "candidates/s")
    assert r.peer > 0 and r.ratio == pytest.approx(10.0 / r.peer)
    assert (r.detail["steps"], r.detail["search_width"], r.detail["topk"]) == (3, 4, 2)


def test_bench_gcg_runs_ours_then_the_peer_row(tmp_path, monkeypatch):
    import interp.attacks.gcg as gcg  # where bench_gcg takes run_gcg from

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(nanogcg_env.NANOGCG_ENV, raising=False)
    seen = []

    def fake_run_gcg(model, train, val, cfg):
        seen.append((train, cfg))
        return SimpleNamespace(candidates_per_second=7.0, losses=[1.0])

    monkeypatch.setattr(gcg, "run_gcg", fake_run_gcg)
    _forbid_installing(monkeypatch)
    q = load_source("bank:capitals:1")[0]
    r = bench_gcg(SimpleNamespace(model=None, questions=[q]), steps=2, width=8, topk=4)
    [(train, cfg)] = seen
    assert train == [q] and (cfg.steps, cfg.search_width, cfg.topk, cfg.chat) == (2, 8, 4, True)
    assert (r.name, r.ours, r.met) == ("gcg-vs-nanogcg", 7.0, None)
    assert "make bench-peers" in r.detail["skipped"]


def test_a_skipped_lm_eval_row_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    _forbid_installing(monkeypatch)
    r = bench_lm_eval(None)
    assert (r.ours, r.peer, r.met) == (None, None, None)
    assert "make bench-peers" in r.detail["skipped"]
    assert "pip install -e '.[bench]'" in r.detail["skipped"]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_bench_sets_up_both_peers_then_runs_the_benchmark():
    root = Path(__file__).resolve().parents[1]
    # -n prints the recipes without running any; -B prints them even where stamps are fresh
    proc = subprocess.run(["make", "-n", "-B", "-C", str(root), "bench"], capture_output=True,
                          text=True, check=True)
    lines = proc.stdout.splitlines()

    def at(fragment):
        return next(i for i, line in enumerate(lines) if fragment in line)

    lm_eval = at("pip install -q -e '.[bench]'")
    venv = at("-m venv .venv-nanogcg")
    install = at(".venv-nanogcg/bin/pip install -q -r benchmarks/requirements/nanogcg.txt")
    run = at("interp bench --out bench/cpu.json")
    assert max(lm_eval, venv, install) < run and venv < install
    # the requirements come from the file, never from importing a package
    assert not any("import" in line for line in lines)


# ------------------------------------------------- `interp bench`: a thin entry into benchmarks/
def _as_the_console_script(monkeypatch, cwd: Path) -> None:
    """Run in `cwd` with no `benchmarks` imported or importable through sys.path, as the
    `interp` console script starts (it puts its own bin folder on sys.path, not the cwd)."""
    monkeypatch.chdir(cwd)
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path
                                      if not (Path(p or ".") / "benchmarks").is_dir()])


def test_interp_bench_outside_a_checkout_says_how_to_get_it_in_one_line(tmp_path, monkeypatch,
                                                                         capsys):
    from interp.cli import main

    _as_the_console_script(monkeypatch, tmp_path)
    assert main(["bench", "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkout" in err[0] and "make bench" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_interp_bench_from_the_checkout_root_imports_its_benchmarks(monkeypatch):
    from interp.cli import _import_benchmarks

    root = Path(__file__).resolve().parents[1]
    _as_the_console_script(monkeypatch, root)
    run_bench, markdown = _import_benchmarks()
    assert Path(sys.modules["benchmarks"].__file__).parent == root / "benchmarks"
    assert run_bench.__module__ == "benchmarks.run" and markdown.__module__ == "benchmarks.report"


def test_benchmarks_stay_out_of_the_installed_library():
    root = Path(__file__).resolve().parents[1]
    assert 'include = ["interp*"]' in (root / "pyproject.toml").read_text()
    importers = sorted(p.relative_to(root).as_posix() for p in (root / "interp").rglob("*.py")
                       if any(f"{w} benchmarks" in p.read_text() for w in ("from", "import")))
    assert importers == ["interp/cli.py"]  # interp bench's lazy import, nothing else


def test_training_rows_are_registered():
    assert {"lora", "rmu-step", "npo-step", "snip"} <= set(BENCHMARKS)


def test_the_peer_losses_are_ours_on_the_same_batch(tiny_model, tiny_llama_dir):
    """The transformers side of the training rows computes the same losses: labels from our
    loss mask, full-logit NLL per sequence and per token (the rows then compare speed only)."""
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.training import hf_labels, hf_token_nll
    from interp.training import lm_loss, pack, sequence_nll

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    batch = pack([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]], [3, 2], 0, "cpu")
    with torch.no_grad():
        per_seq, per_token = hf_token_nll(hf, batch)
        torch.testing.assert_close(per_seq, sequence_nll(tiny_model, batch), atol=1e-4,
                                   rtol=1e-4)
        torch.testing.assert_close(per_token, lm_loss(tiny_model, batch), atol=1e-4, rtol=1e-4)
        loss = hf(input_ids=batch.tokens, attention_mask=batch.valid,
                  labels=hf_labels(batch)).loss
        torch.testing.assert_close(loss, lm_loss(tiny_model, batch), atol=1e-4, rtol=1e-4)


def test_the_attention_rows_compare_sdpa_with_eager_on_the_same_model(tiny_model):
    """Both sides run on the same model back to back; its gradient flags are as before and its
    attention is SDPA again afterwards; at 256 tokens eager keeps the patterns, so its peak is
    higher."""
    from benchmarks.attention import bench_attention
    from interp.model.attention import attention_modules, is_installed

    flags = [p.requires_grad for p in tiny_model.parameters()]
    ctx = common.Context(tiny_model, [], repeats=1)
    time_row, memory_row = bench_attention(ctx, n_tokens=256)
    assert time_row.ours > 0 and time_row.peer > 0
    assert memory_row.ratio == pytest.approx(memory_row.peer / memory_row.ours)
    assert memory_row.ratio > 1
    assert [p.requires_grad for p in tiny_model.parameters()] == flags
    assert all(p.grad is None for p in tiny_model.parameters())
    assert all(is_installed(m) for m in attention_modules(tiny_model))  # SDPA, as loaded
