"""Loaders for WMDP- and MMLU-schema files, and their one-line errors on bad rows."""

from __future__ import annotations

import json

import pytest

from interp.data.questions import load_questions
from interp.errors import InterpError

from .conftest import WMDP_ROWS


def test_jsonl_json_csv_parquet_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in WMDP_ROWS))
    (tmp_path / "q.json").write_text(json.dumps(WMDP_ROWS))
    pq.write_table(pa.Table.from_pylist(WMDP_ROWS), tmp_path / "q.parquet")
    lines = ["question,choice0,choice1,choice2,choice3,answer"]
    for r in WMDP_ROWS:
        lines.append(",".join([f'"{r["question"]}"', *[f'"{c}"' for c in r["choices"]],
                               str(r["answer"])]))
    (tmp_path / "q.csv").write_text("\n".join(lines) + "\n")
    loaded = [load_questions(tmp_path / f"q.{ext}", subject="biology")
              for ext in ("jsonl", "json", "parquet", "csv")]
    for qs in loaded:
        assert [q.question for q in qs] == [r["question"] for r in WMDP_ROWS]
        assert [list(q.choices) for q in qs] == [r["choices"] for r in WMDP_ROWS]
        assert [q.answer for q in qs] == [r["answer"] for r in WMDP_ROWS]
        assert {q.subject for q in qs} == {"biology"}


def test_mmlu_schema_subject_from_row(tmp_path):
    rows = [dict(WMDP_ROWS[0], subject="college_biology")]
    (tmp_path / "m.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (q,) = load_questions(tmp_path / "m.jsonl", subject="ignored")
    assert q.subject == "college_biology"


def test_limit(wmdp_jsonl):
    assert len(load_questions(wmdp_jsonl, limit=2)) == 2


BAD = {
    "three_choices": ('{"question": "q", "choices": ["a", "b", "c"], "answer": 0}', "4 choices"),
    "five_choices": ('{"question": "q", "choices": ["a","b","c","d","e"], "answer": 0}',
                     "4 choices"),
    "answer_out_of_range": ('{"question": "q", "choices": ["a","b","c","d"], "answer": 4}',
                            "out of range"),
    "answer_negative": ('{"question": "q", "choices": ["a","b","c","d"], "answer": -1}',
                        "out of range"),
    "answer_not_int": ('{"question": "q", "choices": ["a","b","c","d"], "answer": "x"}',
                       "integer"),
    "answer_float_string": ('{"question": "q", "choices": ["a","b","c","d"], "answer": "1.5"}',
                            "integer"),
    "missing_question": ('{"choices": ["a","b","c","d"], "answer": 0}', "missing field"),
    "wrong_schema": ('{"prompt": "q", "options": ["a","b","c","d"], "label": 0}',
                     "missing field"),
    "choices_not_list": ('{"question": "q", "choices": 5, "answer": 0}', "list of 4 strings"),
    "empty_question": ('{"question": "  ", "choices": ["a","b","c","d"], "answer": 0}',
                       "non-empty"),
    "bad_json": ('{"question": "q", "choices": [', "invalid JSON"),
    "empty_file": ("", "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rows_raise_one_line(case, tmp_path):
    text, message = BAD[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(InterpError, match=message) as info:
        load_questions(path)
    assert "\n" not in str(info.value)


def test_non_utf8(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"question": "\xff\xfe", "choices": ["a","b","c","d"], "answer": 0}\n')
    with pytest.raises(InterpError, match="UTF-8"):
        load_questions(path)


def test_missing_file_and_unknown_source(tmp_path):
    with pytest.raises(InterpError, match="not found"):
        load_questions(tmp_path / "nope.jsonl")
    with pytest.raises(InterpError, match="unknown data source"):
        load_questions("not-a-dataset")
    (tmp_path / "q.txt").write_text("hello")
    with pytest.raises(InterpError, match="unsupported file type"):
        load_questions(tmp_path / "q.txt")
