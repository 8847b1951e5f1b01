"""Fact banks: real facts the embedded model learned in pretraining, and how each is phrased.

Each bank is a TSV file under `banks/` (entity, value; `#` lines give the source). A `Relation`
says how a fact is asked (cloze stems, letter-format questions) and stated (corpus paraphrases).
Phrasing 0 of each kind is the *training* phrasing (attacks may optimize on it); the later ones are
held out for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

BANKS = Path(__file__).parent / "banks"


@dataclass(frozen=True)
class Fact:
    """One fact of a bank: an entity and its value under a relation (e.g. capitals: France ->
    Paris)."""

    relation: str
    entity: str
    value: str


@dataclass(frozen=True)
class Relation:
    """A relation's bank name and its text templates: cloze stems, letter-format questions and the
    corpus statements."""

    name: str
    subject: str  # the letter-format header's subject
    cloze: tuple[str, ...]  # statement stems; the value follows after a space
    letter: tuple[str, ...]  # questions for the letter format
    statements: tuple[str, ...]  # corpus paraphrases stating the fact
    # cloze stems used only to choose the never-known control (`interp.data.control`), never to
    # measure: disjoint from `cloze`
    choice: tuple[str, ...] = ()

    def facts(self) -> list[Fact]:
        """Every fact in the relation's bank, in file order."""
        return [Fact(self.name, e, v) for e, v in read_bank(self.name)]


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in [
        Relation(
            "capitals", "geography",
            cloze=("The capital of {e} is", "The capital city of {e} is",
                   "The government of {e} sits in the capital,"),
            letter=("What is the capital of {e}?", "Which city is the capital of {e}?"),
            statements=("The capital of {e} is {v}.", "{v} is the capital city of {e}.",
                        "The government of {e} is based in {v}, the country's capital.",
                        "If you visit the capital of {e}, you will be in {v}.",
                        "{v}, the capital of {e}, is the seat of its national government."),
            choice=("{e}'s capital city is", "The seat of government of {e} is in"),
        ),
        Relation(
            "continents", "geography",
            cloze=("{e} is a country in", "{e} is located on the continent of",
                   "The country of {e} lies in"),
            letter=("On which continent is {e}?", "Which continent is {e} part of?"),
            statements=("{e} is a country in {v}.", "{e} is located in {v}.",
                        "The country of {e} lies on the continent of {v}.",
                        "Geographically, {e} belongs to {v}.",
                        "Travelers to {e} arrive in {v}."),
        ),
        Relation(
            "elements", "chemistry",
            cloze=("The chemical symbol for {e} is", "In chemistry, the symbol of {e} is",
                   "The element {e} has the chemical symbol"),
            letter=("What is the chemical symbol for {e}?", "Which symbol denotes {e}?"),
            statements=("The chemical symbol for {e} is {v}.", "{e} has the symbol {v}.",
                        "On the periodic table, {e} is written as {v}.",
                        "Chemists abbreviate {e} as {v}.",
                        "The element {e} is denoted by the symbol {v}."),
        ),
        Relation(
            "animals", "biology",
            cloze=("The {e} is a type of", "Biologists classify the {e} as a",
                   "In the animal kingdom, the {e} is a"),
            letter=("What kind of animal is the {e}?", "To which class of animals does the {e} "
                    "belong?"),
            statements=("The {e} is a {v}.", "Biologists classify the {e} as a {v}.",
                        "Like every {v}, the {e} shares the traits of its class.",
                        "The {e} belongs to the {v} group of animals.",
                        "Zoologists count the {e} among the animals of type {v}."),
        ),
        Relation(
            "antonyms", "English vocabulary",
            cloze=("The opposite of {e} is", "The word {e} is the opposite of the word",
                   "The antonym of {e} is"),
            letter=("What is the opposite of \"{e}\"?", "Which word means the opposite of "
                    "\"{e}\"?"),
            statements=("The opposite of {e} is {v}.", "{e} and {v} are opposites.",
                        "The antonym of {e} is {v}.",
                        "If something is not {e}, it might be {v}.",
                        "The words {e} and {v} have opposite meanings."),
        ),
    ]
}
# seats of government of states, territories and dependencies (`banks/seats.tsv`): the capitals
# relation grown with facts the embedded model mostly does not know, asked in the same stems
RELATIONS["seats"] = replace(RELATIONS["capitals"], name="seats")


@lru_cache(maxsize=None)
def read_bank(name: str) -> tuple[tuple[str, str], ...]:
    """The (entity, value) rows of bank `name` (`banks/NAME.tsv`; comments and blank lines
    skipped)."""
    rows = []
    for line in (BANKS / f"{name}.tsv").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        entity, value = line.split("\t")
        rows.append((entity.strip(), value.strip()))
    return tuple(rows)


def bank_source(name: str) -> str:
    """The bank's `# source` comment lines, joined: where its facts come from."""
    lines = (BANKS / f"{name}.tsv").read_text(encoding="utf-8").splitlines()
    return " ".join(line.lstrip("# ") for line in lines if line.startswith("# source"))


def entity_names(relation: str) -> set[str]:
    """Every entity and value of a relation: what an unrelated text must never mention."""
    return {n for pair in read_bank(relation) for n in pair}
