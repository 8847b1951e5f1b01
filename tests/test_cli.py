"""The `interp` command: result files, and one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from interp.cli import main


def test_eval_writes_result(tiny_llama_dir, wmdp_jsonl, tmp_path):
    out = tmp_path / "res.json"
    assert main(["eval", "--model", str(tiny_llama_dir), "--data", str(wmdp_jsonl),
                 "--subject", "biology", "--out", str(out), "--device", "cpu"]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 3 and len(res["items"]) == 3
    for item in res["items"]:
        assert set(item) == {"index", "pred", "answer", "probs"}
        assert abs(sum(item["probs"]) - 1) < 1e-5
        assert item["pred"] == max(range(4), key=lambda i: item["probs"][i])
    assert res["accuracy"] == pytest.approx(sum(i["pred"] == i["answer"] for i in res["items"]) / 3)
    assert res["model"] == str(tiny_llama_dir) and res["chat"] is False


def _run(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "interp.cli", *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    return proc.returncode, proc.stderr


@pytest.fixture()
def bad_files(tmp_path):
    files = {
        "three_choices.jsonl": '{"question": "q", "choices": ["a","b","c"], "answer": 0}\n',
        "answer_range.jsonl": '{"question": "q", "choices": ["a","b","c","d"], "answer": 7}\n',
        "empty.jsonl": "",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


# the console script in a real subprocess (exit status, stderr); the full bad-input corpus runs
# in-process in test_bad_input.py
@pytest.mark.parametrize("case,args,message", [
    ("not four choices", ["--data", "{tmp}/three_choices.jsonl"], "4 choices"),
    ("unwritable output", ["--data", "{ok}", "--out", "/proc/interp-nope/x.json"],
     "cannot write"),
])
def test_bad_input_exit_2(case, args, message, bad_files, wmdp_jsonl, tiny_llama_dir):
    args = [a.format(tmp=bad_files, ok=wmdp_jsonl) for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny_llama_dir)]
    if "--out" not in args:
        args += ["--out", str(bad_files / "out.json")]
    code, err = _run(["eval", "--device", "cpu", *args], bad_files)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("interp: error")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not (bad_files / "out.json").exists()
