"""`interp bench` without timing anything: the harness sees exactly our prompt, results are
oriented and tabled as documented (a bad name is a case of test_bad_input)."""

from __future__ import annotations

import jinja2
import yaml

from interp.bench import BenchResult, _result, lm_eval_doc, lm_eval_task, markdown
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
    faster = _result("x", 30.0, 10.0, "questions/s", 3.0, 2.0)
    slower = _result("y", 5.0, 10.0, "questions/s", 0.5, 0.9)
    skipped = _result("z", None, None, "questions/s", None, 2.0, skipped="not installed")
    assert (faster.met, slower.met, skipped.met) == (True, False, None)
    table = markdown({"benchmarks": [vars(b) for b in (faster, slower, skipped)]})
    lines = table.strip().splitlines()
    assert len(lines) == 5
    assert lines[2].endswith("| yes |") and lines[3].endswith("| no |")
    assert lines[4].endswith("| skipped |")
    assert isinstance(faster, BenchResult)

