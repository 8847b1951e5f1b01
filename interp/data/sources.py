"""Question sources by name: files and hub sets (`load_questions`), the fact banks, and the
splits of a built data folder or a run folder.

- `bank:RELATION[:PHRASING]` builds cloze questions from one fact bank on the fly (seed 0, nothing
  filtered) with the embedded tokenizer: a small bundled question set that needs no build step;
- `FOLDER:SPLIT` (or `split=`) reads a split, e.g. `runs/laptop:forget_test`, from a data folder
  or from a run folder's `data/`.
"""

from __future__ import annotations

from pathlib import Path

from interp.data.questions import Question, load_questions
from interp.errors import InterpError

NAMED = ("bank:", "mmlu", "wmdp-")


def _folder_split(spec: str, split: str | None) -> tuple[Path, str] | None:
    if split is None and spec.startswith(NAMED):
        return None  # a fact bank or a hub set, even beside a folder of that name
    folder, name = Path(spec), split
    if split is None and ":" in spec and Path(spec.rsplit(":", 1)[0]).is_dir():
        folder, name = Path(spec.rsplit(":", 1)[0]), spec.rsplit(":", 1)[1]
    if not folder.is_dir():
        return None
    if (folder / "data" / "manifest.json").is_file():
        folder = folder / "data"  # a run folder
    if not name:
        raise InterpError(f"{folder} is a folder: name a split, e.g. {spec}:forget_test")
    return folder, name


def load_source(spec: str | Path, *, subject: str | None = None, limit: int | None = None,
                fmt: str = "cloze", split: str | None = None) -> list[Question]:
    """Questions from any source `--data` takes (see the module docstring)."""
    spec = str(spec)
    if (found := _folder_split(spec, split)) is not None:
        from interp.data.folder import DataFolder

        return DataFolder(found[0]).questions(found[1], limit=limit)
    if not spec.startswith("bank:"):
        return load_questions(spec, subject=subject, limit=limit)
    from interp.data.benchmark import QuestionBuilder
    from interp.data.facts import RELATIONS
    from interp.model.load import embedded_tokenizer

    parts = spec.split(":")
    relation = parts[1] if len(parts) > 1 else ""
    if relation not in RELATIONS:
        raise InterpError(f"unknown fact bank {relation!r}; use one of {sorted(RELATIONS)}")
    try:
        phrasing = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        raise InterpError(f"{spec}: the phrasing must be an integer") from None
    builder = QuestionBuilder(embedded_tokenizer(), seed=0)
    facts = RELATIONS[relation].facts()[:limit] if limit else RELATIONS[relation].facts()
    out = [q for f in facts if (q := builder.build(f, fmt=fmt, phrasing=phrasing,
                                                   split="bank")) is not None]
    if subject:
        out = [Question(q.question, q.choices, q.answer, subject, q.format, q.meta) for q in out]
    return out
