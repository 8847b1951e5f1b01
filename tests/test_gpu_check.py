"""`scripts/gpu_check.sh` on its CPU path (`--device cpu --shape tiny`): every part runs and its
JSON says what it measured; the row comparison by hand."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.gpu_check import compare_rows  # noqa: E402


def test_rows_are_compared_by_key_with_the_tolerance():
    ref = [{"model": "rmu", "attack": "none", "split": "forget", "mode": "raw", "accuracy": 0.5},
           {"model": "rmu", "attack": "lens", "split": "forget", "mode": None, "accuracy": 0.2}]
    ours = [dict(ref[0], accuracy=0.52), dict(ref[1], accuracy=0.3),
            dict(ref[1], attack="gcg", accuracy=0.9)]  # no reference row: not matched
    ours.append(dict(ref[0], mode=None, accuracy=0.5))  # no reference row either
    c = compare_rows(ours, ref, 0.05)
    assert (c["rows"], c["matched"], c["within_tolerance"]) == (4, 2, 1)
    assert abs(c["max_abs_difference"] - 0.1) < 1e-12
    assert c["worst"][0]["row"][1] == "lens"
    # rows that differ only in their column are different rows
    twins = [dict(ref[0], column="a"), dict(ref[0], column="b", accuracy=0.9)]
    assert compare_rows(twins, twins, 0.0)["within_tolerance"] == 2


def test_the_gpu_check_runs_on_the_cpu(smoke_run, tmp_path):
    """The smoke part reads the suite's finished smoke run back (the same device, so every row
    equals its reference), the plan and the memory check run at the tiny shape, and the SDPA
    tests pass on the CPU."""
    run, _ = smoke_run
    work = tmp_path / "work"
    shutil.copytree(run, work / "smoke-cpu")
    out = tmp_path / "check.json"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu",
                           "--shape", "tiny", "--out", str(out), "--work", str(work),
                           "--reference", str(run / "results.json")],
                          capture_output=True, text=True, timeout=600)
    errors = ({k: v["error"] for k, v in json.loads(out.read_text())["parts"].items()
               if "error" in v} if out.is_file() else proc.stderr[-2000:])
    assert proc.returncode == 0, errors
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert set(parts) == {"smoke", "plan", "memory", "sdpa"}
    s = parts["smoke"]
    # every reference row is matched and equal (the folder may hold cells other tests added)
    assert s["matched"] == s["reference_rows"] == s["within_tolerance"] > 0
    assert s["max_abs_difference"] == 0
    assert parts["plan"]["all_fit"] and parts["plan"]["shape"] == "tiny"
    for step in parts["memory"]["steps"]:  # meta's count = the CPU's, to 0.5%
        assert abs(step["measured_over_projected"] - 1) < 0.005, step
    assert parts["sdpa"]["returncode"] == 0 and "passed" in parts["sdpa"]["summary"]
