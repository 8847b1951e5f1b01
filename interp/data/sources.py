"""Question sources by name: files and hub sets (`load_questions`), plus the fact banks.

`bank:RELATION[:PHRASING]` builds cloze questions from one fact bank on the fly (seed 0, nothing
filtered) with the embedded tokenizer: a small bundled question set that needs no build step.
"""

from __future__ import annotations

from interp.data.questions import Question, load_questions
from interp.errors import InterpError


def load_source(spec: str, *, subject: str | None = None, limit: int | None = None,
                fmt: str = "cloze") -> list[Question]:
    if not spec.startswith("bank:"):
        return load_questions(spec, subject=subject, limit=limit)
    from interp.data.benchmark import QuestionBuilder
    from interp.data.facts import RELATIONS
    from interp.models import embedded_tokenizer

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
