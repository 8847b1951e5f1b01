"""Multiple-choice questions in WMDP's schema, and loaders for hub and local sources.

A `Question` is one row: question text, exactly four choices, the index of the right one and a
subject (used in the letter-format header). A row may carry a `format`: "letter" (the paper's
A/B/C/D prompt, the default for hub data) or "cloze" (the question is a statement stem and the
candidates are the choices' first tokens).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from interp.errors import InterpError

WMDP_SUBJECTS = {"wmdp-bio": "biology", "wmdp-cyber": "cybersecurity", "wmdp-chem": "chemistry"}
FORMATS = ("letter", "cloze")


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: the text, exactly four choices, the right choice's index (0-3),
    the subject, the format ("letter" or "cloze") and free `meta` (not compared)."""

    question: str
    choices: tuple[str, str, str, str]
    answer: int
    subject: str = ""
    format: str = "letter"
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.choices) != 4:
            raise InterpError(
                f"a question must have exactly 4 choices, got {len(self.choices)}: "
                f"{self.question[:60]!r} (fix the data file)"
            )
        if not 0 <= self.answer < 4:
            raise InterpError(
                f"answer index {self.answer} is out of range 0..3 for {self.question[:60]!r}"
                " (fix the data file)"
            )
        if self.format not in FORMATS:
            raise InterpError(f"unknown question format {self.format!r}; use one of {FORMATS}")

    def to_json(self) -> dict[str, Any]:
        """The question as a JSON row (choices as a list; `meta` left out when empty)."""
        row = asdict(self)
        row["choices"] = list(self.choices)
        if not row["meta"]:
            del row["meta"]
        return row


def question_from_row(row: dict[str, Any], *, where: str, subject: str = "") -> Question:
    """Validate one raw row in WMDP's schema (question, choices, answer[, subject, format])."""
    missing = [k for k in ("question", "choices", "answer") if k not in row]
    if missing:
        raise InterpError(
            f"{where}: missing field(s) {missing}; rows need question, choices (4), answer (0-3)"
        )
    choices = row["choices"]
    if isinstance(choices, str):
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError:
            raise InterpError(f"{where}: 'choices' must be a list of 4 strings") from None
    if hasattr(choices, "tolist"):
        choices = choices.tolist()
    if not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) for c in choices):
        raise InterpError(f"{where}: 'choices' must be a list of 4 strings")
    if len(choices) != 4:
        raise InterpError(
            f"{where}: expected exactly 4 choices, got {len(choices)} (the scorer is four-way)"
        )
    answer = row["answer"]
    if hasattr(answer, "item"):  # numpy / pyarrow scalars
        answer = answer.item()
    if isinstance(answer, str):
        text = answer.strip()
        if text in ("A", "B", "C", "D"):
            answer = "ABCD".index(text)
        elif text.lstrip("-").isdigit():
            answer = int(text)
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise InterpError(f"{where}: 'answer' must be an integer 0-3, got {answer!r}")
    if not 0 <= answer < 4:
        raise InterpError(f"{where}: answer index {answer} is out of range 0-3")
    if not isinstance(row["question"], str) or not row["question"].strip():
        raise InterpError(f"{where}: 'question' must be a non-empty string")
    meta = dict(row.get("meta") or {}) if isinstance(row.get("meta"), dict) else {}
    meta.update({k: v for k, v in row.items() if k in ("id", "relation", "entity", "split")})
    return Question(
        question=row["question"],
        choices=tuple(choices),  # type: ignore[arg-type]
        answer=answer,
        subject=str(row.get("subject") or subject),
        format=str(row.get("format") or "letter"),
        meta=meta,
    )


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise InterpError(
                f"{path}: not a readable parquet file ({exc.__class__.__name__})"
            ) from None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InterpError(f"{path}: not UTF-8 text; re-save the file as UTF-8") from None
    if not text.strip():
        raise InterpError(f"{path}: the file is empty; it needs at least one question")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InterpError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        if isinstance(data, dict):
            data = data.get("questions", data.get("rows"))
        if not isinstance(data, list):
            raise InterpError(f"{path}: expected a JSON list of question objects")
        return data
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InterpError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
        return rows
    if suffix == ".csv":
        rows = []
        for row in csv.DictReader(text.splitlines()):
            if "choices" not in row and all(f"choice{i}" in row for i in range(4)):
                row["choices"] = [row.pop(f"choice{i}") for i in range(4)]
            rows.append(row)
        return rows
    raise InterpError(
        f"{path}: unsupported file type {suffix!r}; use .json, .jsonl, .parquet or .csv"
    )


def load_questions(
    source: str | Path, *, subject: str | None = None, limit: int | None = None
) -> list[Question]:
    """Questions from a local file (.json/.jsonl/.parquet/.csv) or a hub name.

    Hub names: `wmdp-bio`, `wmdp-cyber`, `mmlu`, `mmlu:SUBJECT` (through `datasets`).
    Subject: the row's own, else `subject`, else the data set's (WMDP) or the MMLU subject.
    """
    path = Path(source)
    name = str(source)
    if path.suffix.lower() in (".json", ".jsonl", ".parquet", ".csv") or path.exists():
        if not path.is_file():
            raise InterpError(f"data file not found: {path}")
        rows = _read_rows(path)
        questions = [
            question_from_row(r if isinstance(r, dict) else {}, where=f"{path} row {i}",
                              subject=subject or "")
            for i, r in enumerate(rows)
        ]
    elif name in WMDP_SUBJECTS or name == "mmlu" or name.startswith("mmlu:"):
        questions = _load_hub(name, subject)
    else:
        raise InterpError(
            f"unknown data source {name!r}: give a .json/.jsonl/.parquet/.csv file or one of "
            "wmdp-bio, wmdp-cyber, mmlu, mmlu:SUBJECT"
        )
    if not questions:
        raise InterpError(f"{name}: no questions found")
    return questions[:limit] if limit else questions


def _load_hub(name: str, subject: str | None) -> list[Question]:
    import datasets

    try:
        if name in WMDP_SUBJECTS:
            ds = datasets.load_dataset("cais/wmdp", name, split="test")
            default = WMDP_SUBJECTS[name]
        else:
            config = name.split(":", 1)[1] if ":" in name else "all"
            ds = datasets.load_dataset("cais/mmlu", config, split="test")
            default = ""
    except Exception as exc:
        raise InterpError(
            f"could not load {name!r} from the hub ({exc.__class__.__name__}); "
            "without network access, pass a local file in WMDP's schema"
        ) from None
    out = []
    for i, row in enumerate(ds):
        row = dict(row)
        row_subject = subject or row.get("subject") or default
        row["subject"] = str(row_subject).replace("_", " ")
        out.append(question_from_row(row, where=f"{name} row {i}"))
    return out


def save_jsonl(questions: Iterable[Question], path: Path) -> None:
    """Write questions as JSONL (atomic: temporary file + rename)."""
    from interp.store import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(q.to_json()) + "\n" for q in questions))
