"""The questions an attack reports on, scored together: forget, retain and the never-known control.

Every attack scores its final, chosen setting on the test split's forget and retain questions, and
on the control questions (`interp.data.control`) in the same format and mode as its forget number,
keeping each question's correctness for the entity bootstrap and the paired tests
(`interp.pipelines.controls`). A data folder without a control split scores none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from interp.data.folder import as_data
from interp.data.questions import Question
from interp.results import Measured, bits
from interp.scoring import EvalResult

Scorer = Callable[[Sequence[Question]], EvalResult]


@dataclass
class QuestionSets:
    """One split's forget, retain and control questions (control: empty where the data has
    none)."""

    forget: list[Question]
    retain: list[Question]
    control: list[Question]

    @classmethod
    def load(cls, data, split: str = "test", limit: int | None = None,
             retain_limit: int | None = -1) -> "QuestionSets":
        """The `split` ("test" or "val") files of a data folder, the first `limit` of each
        (`retain_limit`: another cap for retain; -1: the same as `limit`)."""
        data = as_data(data)
        r_limit = limit if retain_limit == -1 else retain_limit
        control = (data.questions(f"control_{split}", limit=limit)
                   if data.has(f"control_{split}") else [])
        return cls(data.questions(f"forget_{split}", limit=limit),
                   data.questions(f"retain_{split}", limit=r_limit), control)

    def map(self, fn: Callable[[list[Question]], list[Question]]) -> "QuestionSets":
        """The same sets with `fn` applied to each (e.g. a rephrased stem)."""
        return QuestionSets(fn(self.forget), fn(self.retain),
                            fn(self.control) if self.control else [])

    def score(self, scorer: Scorer, cls: type = Measured, retain: bool = True) -> Measured:
        """Accuracy on each set under `scorer`, with counts and the per-question correctness of
        forget and control (`retain=False`: retain not scored, NaN)."""
        f = scorer(self.forget)
        r = scorer(self.retain) if retain and self.retain else None
        c = scorer(self.control) if self.control else None
        return cls(f.accuracy, r.accuracy if r is not None else float("nan"), f.n,
                   r.n if r is not None else 0,
                   control=c.accuracy if c is not None else None,
                   n_control=c.n if c is not None else 0, forget_correct=bits(f.correct),
                   control_correct=bits(c.correct) if c is not None else None)

    def sizes(self) -> tuple[int, int, int]:
        """(forget, retain, control) question counts."""
        return len(self.forget), len(self.retain), len(self.control)


def test_and_val(data, limit: int | None = None) -> tuple[QuestionSets, QuestionSets]:
    """The test and validation sets of a data folder, the first `limit` of each file."""
    return QuestionSets.load(data, "test", limit=limit), QuestionSets.load(data, "val",
                                                                           limit=limit)


def scorer_of(model, batch_size: int = 32, **settings) -> Scorer:
    """`evaluate` on `model` with these settings (chat, prefix, hooks ...), as a `Scorer`."""
    from interp.scoring import evaluate

    return lambda qs: evaluate(model, qs, progress=False, batch_size=batch_size, **settings)


def best_on_val(options: dict) -> str:
    """The option (a name -> object with a `val` `Measured`) with the best validation forget
    accuracy, ties broken by validation retain accuracy."""
    return max(options, key=lambda k: (options[k].val.forget, options[k].val.retain))


def reference_rows(attack: str, measured: Measured, fmt: str) -> list:
    """The original's rows on an attack's own setting (a rephrased stem, a rounding grid): forget
    and control, the reference of the recovered share."""
    from interp.results import score_rows

    return [r for r in score_rows("original", attack, measured, measured, fmt)
            if r.split != "retain"]


def option_bars(no_attack: Measured, options: dict[str, Measured], *, title: str,
                first: str = "none", extra: dict[str, list] | None = None):
    """Test forget (and control, where measured) accuracy per option beside no attack, as bars."""
    from interp.plots import bar_chart

    series = {"forget": [no_attack.forget] + [m.forget for m in options.values()]}
    if no_attack.control is not None:
        series["control"] = [no_attack.control] + [m.control for m in options.values()]
    series.update(extra or {})
    return bar_chart([first, *options], series, title=title,
                     n={"forget": no_attack.n_forget, "control": no_attack.n_control})
