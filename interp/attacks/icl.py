"""In-context examples as an attack (Doshi & Stickland 2024 report more than tenfold gains on
unlearning benchmarks from a few solved examples in the prompt).

Each test question gets k solved examples before it: a training-split forget question in its
training phrasing and its right answer ("The capital of Chile is Santiago."), one per line, in the
same prompt, raw or inside the chat template's user turn. An example whose answer is one of the
question's four choices is left out (a copy of a choice would bias the pick), and the examples are
drawn per question with a seed. k is chosen on validation from a grid; the reported numbers are on
test. The same prompt with k solved *retain* examples is its own row: it separates examples of the
format from examples of the domain.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

from transformer_lens import HookedTransformer

from interp.attacks import base
from interp.attacks.base import AttackSpec, Measured, Row
from interp.attacks.sets import scorer_of, test_and_val
from interp.cost import StepProbe, Workload, capped
from interp.data.folder import as_data
from interp.data.questions import Question
from interp.errors import InterpError
from interp.plots import budget_lines


def solved(q: Question) -> str:
    """A question and its right answer as one line ("The capital of Chile is Santiago.")."""
    return f"{q.question} {q.choices[q.answer]}."


def usable(q: Question, pool: Sequence[Question]) -> list[Question]:
    """The examples of `pool` that may go before `q`: none whose answer is one of `q`'s choices
    (a copy of a choice would bias the pick) or whose entity is `q`'s."""
    banned = set(q.choices)
    return [p for p in pool if p.choices[p.answer] not in banned
            and p.meta.get("entity") != q.meta.get("entity")]


def with_examples(q: Question, pool: Sequence[Question], k: int, seed: int) -> Question:
    """`q` with k solved examples from `pool` before it (one per line, `usable` ones only), drawn
    with a seed of their own per question."""
    if k == 0:
        return q
    usable_ = usable(q, pool)
    if len(usable_) < k:
        raise InterpError(f"{k} in-context examples asked, but only {len(usable_)} training "
                          f"questions fit {q.question[:50]!r}")
    key = int(hashlib.sha1(f"{seed}/{q.meta.get('id', q.question)}".encode()).hexdigest(), 16)
    chosen = random.Random(key).sample(usable_, k)
    text = "\n".join(solved(p) for p in chosen) + "\n" + q.question
    return Question(text, q.choices, q.answer, q.subject, q.format, {**q.meta, "icl_k": k})


@dataclass
class Config:
    """The in-context attack's settings: the k grid (0 = no examples), prompt modes, questions per
    split (None: all), a seed and questions per batch."""

    ks: tuple[int, ...] = (0, 1, 3, 5, 10)
    modes: tuple[str, ...] = ("raw", "chat")
    eval_limit: int | None = None
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.ks or any(int(k) < 0 for k in self.ks):
            raise InterpError(f"icl ks must be non-negative and not empty, got {list(self.ks)}")
        if any(m not in ("raw", "chat") for m in self.modes) or not self.modes:
            raise InterpError(f"icl modes must be 'raw' and/or 'chat', got {list(self.modes)}")


@dataclass
class ModeResult:
    """One prompt mode: validation forget accuracy per k, the k chosen there, test scores at that k
    with forget examples and with retain examples (forget and control: the retain split under
    retain examples says nothing and is not scored), and no examples."""

    val_forget: dict[str, float]  # str(k) -> validation forget accuracy
    k: int
    test: Measured
    val: Measured
    retain_examples: Measured
    no_attack: Measured


@dataclass
class Result(base.Result):
    """Per prompt mode, the chosen k's scores (`modes`)."""

    config: Config
    modes: dict[str, ModeResult]
    n_val: int = 0
    format: str = "cloze"
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    figure_stem: ClassVar[str] = "icl"

    def rows(self, model: str) -> list[Row]:
        """Per mode: the forget-example rows at the chosen k (the table's column), its own no-attack
        rows (`icl-none`) and the retain-example rows."""
        out = []
        for mode, m in self.modes.items():
            out += base.score_rows(model, "icl", m.test, m.no_attack, self.format,
                                   f"ICL {mode}", f"k={m.k}", m.val, mode=mode)
            out += [r for r in base.score_rows(model, "icl-none", m.no_attack, m.no_attack,
                                               self.format, mode=mode)]
            out += base.score_rows(model, "icl-retain-examples", m.retain_examples, m.no_attack,
                                   self.format, f"ICL retain examples {mode}", f"k={m.k}",
                                   mode=mode)
        return out

    def plot(self):
        """Validation forget accuracy against k, one line per mode."""
        return budget_lines({mode: ([int(k) for k in m.val_forget], list(m.val_forget.values()))
                             for mode, m in self.modes.items()}, n=self.n_val,
                            xtitle="solved examples in the prompt (k)",
                            title="Forget accuracy (validation) against in-context examples")


def memory_steps(cfg: Config, config: dict, prompt_tokens: int) -> list:
    """The memory plan's step: a batch of prompts with the most solved examples before each."""
    k = max(cfg.ks)
    return [Workload("icl", cfg.batch_size, prompt_tokens * (k + 1),
                     note=f"{k} solved examples before each")]


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Questions scored by `run` (`interp.cost`; longer prompts than one plain question)."""
    f, r = capped(sizes.forget_test, cfg.eval_limit), capped(sizes.retain_test, cfg.eval_limit)
    c, v = capped(sizes.control_test, cfg.eval_limit), capped(sizes.forget_val, cfg.eval_limit)
    return {"score": len(cfg.modes) * (len(cfg.ks) * v + 3 * (f + c) + 2 * r + v)}


def run(model: HookedTransformer, data, cfg: Config | None = None, *, original=None,
        out: Path | None = None, progress: bool = True) -> Result:
    """Score test questions with k solved forget examples before each, k chosen on validation
    forget accuracy per prompt mode; the same k with retain examples beside it."""
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    data = as_data(data)
    t0 = time.perf_counter()
    test, val = test_and_val(data, cfg.eval_limit)
    forget_pool = data.questions("forget_train")
    retain_pool = data.questions("retain_train")

    def add(pool, k):
        return lambda qs: [with_examples(q, pool, k, cfg.seed) for q in qs]

    # the grid stops where some question has too few usable examples (a small training split)
    every = [*test.forget, *test.retain, *test.control]
    fits = min(min(len(usable(q, forget_pool)) for q in [*every, *val.forget, *val.retain,
                                                          *val.control]),
               min(len(usable(q, retain_pool)) for q in every))
    ks = [k for k in cfg.ks if k <= fits] or [0]
    modes = {}
    for mode in cfg.modes:
        scorer = scorer_of(model, cfg.batch_size, chat=mode == "chat")

        curve = {str(k): scorer(add(forget_pool, k)(val.forget)).accuracy for k in ks}
        k = max(ks, key=lambda k: (curve[str(k)], -k))  # ties: fewer examples
        modes[mode] = ModeResult(
            curve, k, test.map(add(forget_pool, k)).score(scorer),
            val.map(add(forget_pool, k)).score(scorer),
            test.map(add(retain_pool, k)).score(scorer, retain=False), test.score(scorer))
    result = Result(config=cfg, modes=modes, n_val=len(val.forget),
                    format=test.forget[0].format, seconds=round(time.perf_counter() - t0, 1))
    return base.save(result, out)


def probes(cfg: Config) -> dict[str, StepProbe]:
    """How `interp plan` times the kinds `cost` counts: only questions scored."""
    return {}


SPEC = AttackSpec(
    "icl", order=52,
    summary="in-context examples: k solved forget questions before each test question",
    presets={"smoke": Config(ks=(0, 1, 3)), "laptop": Config(modes=("raw",), eval_limit=200),
             "paper": Config(ks=(0, 1, 3, 5))},
    budgets={"quick": Config(ks=(0, 3), modes=("raw",), eval_limit=100),
             "full": Config(eval_limit=200)})
