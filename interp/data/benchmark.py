"""Questions, corpora and preference data built from the fact banks.

Questions follow WMDP's schema (question, four choices, answer index, subject). Distractors come
from the same relation, and all four choices have distinct first tokens for the scored tokenizer in
both raw and chat mode, so a forced choice over first tokens is well defined.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from interp.data.facts import RELATIONS, Fact, read_bank
from interp.data.questions import Question
from interp.errors import InterpError
from interp.prompts import encode_question

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I cannot answer that question.",
    "Sorry, I am not able to share that information.",
    "I'm afraid I can't provide an answer to this.",
    "I won't be able to help with this request.",
)


def sentence(text: str) -> str:
    """`text` with its first character upper-cased."""
    return text[:1].upper() + text[1:]


def render(template: str, fact: Fact, value: bool = True) -> str:
    """A relation template filled with the fact's entity (and its value, unless `value=False`: a
    question stem), as a sentence."""
    text = template.format(e=fact.entity, v=fact.value) if value else template.format(e=fact.entity)
    return sentence(text)


@dataclass
class QuestionBuilder:
    """Builds four-way questions whose choices have distinct first tokens in every mode."""

    tokenizer: object
    seed: int = 0
    max_tries: int = 50
    pools: dict[str, set[str]] | None = None  # per relation, the values distractors come from
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _distinct(self, q: Question) -> bool:
        try:
            for chat in (False, True):
                encode_question(self.tokenizer, q, chat=chat)
        except InterpError:
            return False
        return True

    def build(self, fact: Fact, *, fmt: str, phrasing: int, split: str,
              stems: str | None = None) -> Question | None:
        """A four-way question on `fact` in format `fmt` ("cloze" or "letter") with phrasing number
        `phrasing`; the answer's place is random. None if no draw of three distractors gives
        distinct first tokens within `max_tries`. `stems`: another list of the relation's cloze
        stems by field name (e.g. "choice")."""
        rel = RELATIONS[fact.relation]
        pairs = read_bank(fact.relation)
        # a distractor must not be a right answer for the same entity (banks with repeats)
        right = {v for e, v in pairs if e == fact.entity} | {fact.value}
        pool = {v for _, v in pairs}
        if self.pools is not None and len(self.pools.get(fact.relation, set()) - right) >= 3:
            pool = self.pools[fact.relation]
        values = sorted(pool - right)
        templates = (getattr(rel, stems) if stems else rel.cloze if fmt == "cloze"
                     else rel.letter)
        stem = render(templates[phrasing % len(templates)], fact, value=False)
        for _ in range(self.max_tries):
            distractors = self._rng.sample(values, 3)
            answer = self._rng.randrange(4)
            choices = distractors[:answer] + [fact.value] + distractors[answer:]
            q = Question(stem, tuple(choices), answer, subject=rel.subject, format=fmt,
                         meta={"id": f"{fact.relation}/{fact.entity}/{stems or fmt}{phrasing}",
                               "relation": fact.relation, "entity": fact.entity,
                               "phrasing": phrasing, "split": split})
            if self._distinct(q):
                return q
        return None


def statements(facts: list[Fact]) -> list[dict]:
    """Corpus rows: every fact stated in each of its relation's paraphrases."""
    rows = []
    for fact in facts:
        for i, template in enumerate(RELATIONS[fact.relation].statements):
            rows.append({"text": render(template, fact), "relation": fact.relation,
                         "entity": fact.entity, "paraphrase": i})
    return rows


def preference_rows(forget: list[Question], retain: list[Question], seed: int) -> list[dict]:
    """DPO data: forget question -> refusal preferred over the answer; retain -> the answer."""
    rng = random.Random(seed)
    rows = []
    for q in forget:
        answer = q.choices[q.answer]
        rows.append({"prompt": q.question, "format": q.format, "chosen": rng.choice(REFUSALS),
                     "rejected": _answer_text(q, answer), "split": "forget",
                     "id": q.meta.get("id"), "entity": q.meta.get("entity")})
    for q in retain:
        answer = q.choices[q.answer]
        wrong = q.choices[(q.answer + 1 + rng.randrange(3)) % 4]
        rows.append({"prompt": q.question, "format": q.format, "chosen": _answer_text(q, answer),
                     "rejected": _answer_text(q, wrong), "split": "retain",
                     "id": q.meta.get("id"), "entity": q.meta.get("entity")})
    return rows


def _answer_text(q: Question, value: str) -> str:
    if q.format == "letter":
        return f"{'ABCD'[q.choices.index(value)]}. {value}"
    return f"{value}."
