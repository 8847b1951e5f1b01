"""Logit lens: read the four candidates' probabilities off every layer.

For every layer, at the last position, the residual stream after the block (and the attention
and MLP outputs on their own) goes through the final norm and the unembedding; softmax over the
whole vocabulary; P(candidate) for the four candidates, their total mass, and the accuracy of the
argmax among them. The last layer's `resid_post` lens is the model's own output.

As an attack (`run`): the lens of one model on the forget questions, and its best layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp import timing
from interp.activations import iter_activations
from interp.attacks import base
from interp.attacks.base import AttackSpec, Row
from interp.cost import StepProbe, capped
from interp.data.folder import as_data
from interp.data.questions import Question
from interp.errors import InterpError
from interp.model.hooks import layer_hook_names, readout
from interp.plots import layer_lines
from interp.results import bits
from interp.scoring import EvalConfig, encode_all

COMPONENTS = ("resid_post", "attn_out", "mlp_out")


@dataclass
class LensConfig:
    """Logit-lens settings: the components read at every layer (of `COMPONENTS`), raw or chat
    prompts, and questions per batch."""

    components: tuple[str, ...] = ("resid_post", "attn_out", "mlp_out")
    chat: bool = False
    batch_size: int = 16


@dataclass
class LensResult:
    """probs: component -> (n_layers, n_questions, 4) full-vocabulary probabilities of the four
    candidates; answers: (n_questions,)."""

    probs: dict[str, Float[Tensor, "n_layers n 4"]]
    answers: Int[Tensor, "n"]  # noqa: F821
    chat: bool = False
    meta: dict = field(default_factory=dict)

    def accuracy(self, component: str = "resid_post") -> list[float]:
        """Per layer, the share of questions whose most probable candidate is the answer."""
        preds = self.probs[component].argmax(-1)  # (layers, n)
        return (preds == self.answers[None]).double().mean(-1).tolist()

    def mass(self, component: str = "resid_post") -> list[float]:
        """Per layer, the mean total probability of the four candidates."""
        return self.probs[component].sum(-1).mean(-1).tolist()

    def best_layer(self, component: str = "resid_post") -> tuple[int, float]:
        """The layer with the highest accuracy, and that accuracy."""
        acc = self.accuracy(component)
        layer = max(range(len(acc)), key=lambda i: acc[i])
        return layer, acc[layer]

    def plot(self):
        """Accuracy per layer, one line per component."""
        return layer_lines({c: self.accuracy(c) for c in self.probs},
                           title=f"Logit lens accuracy ({'chat' if self.chat else 'raw'})")

    def to_json(self) -> dict:
        """The mode, the question count and per component the accuracy and mass curves (not the
        probabilities)."""
        return {"chat": self.chat, "n": int(self.answers.shape[0]),
                "components": {c: {"accuracy": self.accuracy(c), "mass": self.mass(c)}
                               for c in self.probs}}


@torch.no_grad()
def logit_lens(model: HookedTransformer, questions: Sequence[Question],
               cfg: LensConfig | None = None) -> LensResult:
    """The logit lens of `model` on `questions`: per component, (n_layers, n_questions, 4)
    probabilities of the candidates at the last position, read by the model's own letter rule."""
    cfg = cfg or LensConfig()
    encoded = encode_all(model, questions, EvalConfig(chat=cfg.chat))  # the model's letter rule
    unknown = set(cfg.components) - set(COMPONENTS)
    if unknown:
        raise InterpError(f"unknown lens component(s) {sorted(unknown)}; use {list(COMPONENTS)}")
    names = [n for c in cfg.components for n in layer_hook_names(model, c)]
    out = {c: torch.empty((model.cfg.n_layers, len(encoded), 4)) for c in cfg.components}
    for batch in iter_activations(model, [e.ids for e in encoded], names,
                                  batch_size=cfg.batch_size):
        rows = batch.rows
        cand = torch.tensor([encoded[i].candidates for i in rows], device=batch.acts.device)
        per_comp = einops.rearrange(batch.acts, "(c l) b d -> c l b d", c=len(cfg.components))
        for comp, last in zip(cfg.components, per_comp):  # last: (L, b, d)
            logits = readout(model, last)  # (L, b, vocab)
            probs = logits.float().softmax(-1)
            picked = probs.gather(-1, cand[None].expand(probs.shape[0], -1, -1))
            out[comp][:, rows.start:rows.stop] = picked.cpu()
    answers = torch.tensor([q.answer for q in questions])
    return LensResult(out, answers, chat=cfg.chat)


# ---------------------------------------------------------------------------------- the attack
@dataclass
class Config:
    """The lens attack's settings: the lens, and forget questions read per split, validation and
    test (None: all)."""

    lens: LensConfig = field(default_factory=LensConfig)
    limit: int | None = 200  # forget questions read per split, validation and test (None: all)


@dataclass
class Curve:
    """One component's lens curves, one entry per layer: accuracy and candidate mass."""

    accuracy: list[float]  # per layer
    mass: list[float]  # per layer: mean total probability of the four candidates


@dataclass
class Result(base.Result):
    """The lens on the test forget questions: per-component curves, the resid_post layer chosen on
    validation and its test accuracy, and the last layer's accuracy."""

    config: Config
    n: int
    chat: bool
    components: dict[str, Curve]
    best_layer: int  # chosen on the validation split
    best_accuracy: float  # test accuracy at that layer
    final_accuracy: float
    val_accuracy: list[float] = field(default_factory=list)  # per layer, resid_post
    n_val: int = 0
    format: str = "cloze"
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    # the never-known control through the same lens: per layer (resid_post), n, and per question
    # at the chosen layer; forget's per question at the chosen layer
    control_accuracy: list[float] = field(default_factory=list)
    n_control: int = 0
    control_correct: str | None = None
    forget_correct: str | None = None
    figure_stem: ClassVar[str] = "lens"

    def rows(self, model: str) -> list[Row]:
        """One forget row: test accuracy at the best layer (its validation accuracy beside it)."""
        mode = "chat" if self.chat else "raw"
        rows = [Row(model=model, attack="lens", split="forget", format=self.format,
                    mode=mode, accuracy=self.best_accuracy, n=self.n,
                    column="lens (best layer)", note=f"L{self.best_layer}",
                    val=self.val_accuracy[self.best_layer] if self.val_accuracy else None,
                    n_val=self.n_val or None, correct=self.forget_correct,
                    questions="forget_test" if self.forget_correct else None)]
        if self.control_accuracy:
            rows.append(Row(model=model, attack="lens", split="control", format=self.format,
                            mode=mode, accuracy=self.control_accuracy[self.best_layer],
                            n=self.n_control, correct=self.control_correct,
                            questions="control_test"))
        return rows

    def plot(self):
        """Test accuracy per layer, one line per component, and the control beside them."""
        lines = {c: v.accuracy for c, v in self.components.items()}
        if self.control_accuracy:
            lines["control (resid_post)"] = self.control_accuracy
        return layer_lines(lines,
                           title=f"Logit lens on forget questions "
                                 f"({'chat' if self.chat else 'raw'})", n=self.n)

    @classmethod
    def plot_models(cls, results: dict[str, Result]):
        """resid_post accuracy per layer, one line per protected model."""
        chat = any(r.chat for r in results.values())
        return layer_lines({m: r.components["resid_post"].accuracy for m, r in results.items()},
                           title=f"Logit lens on forget questions ({'chat' if chat else 'raw'})",
                           n={m: r.n for m, r in results.items()})


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Forget questions through the lens (`interp.cost`)."""
    return {"lens": capped(sizes.forget_test, cfg.limit) + capped(sizes.forget_val, cfg.limit)
            + capped(sizes.control_test, cfg.limit)}

def run(model: HookedTransformer, data, cfg: Config | None = None, *, original=None,
        out: Path | None = None, progress: bool = True) -> Result:
    """Logit-lens accuracy per layer on the forget questions (`original` is not used): the best
    layer is chosen on the validation split, its accuracy reported on the test split."""
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    t0 = time.perf_counter()
    data = as_data(data)
    questions = data.questions("forget_test", limit=cfg.limit)
    val_questions = data.questions("forget_val", limit=cfg.limit)
    lens = logit_lens(model, questions, cfg.lens)
    val = logit_lens(model, val_questions, cfg.lens)
    layer, val_acc = val.best_layer()  # chosen on validation, reported on test
    control = (data.questions("control_test", limit=cfg.limit) if data.has("control_test")
               else [])
    ctrl = logit_lens(model, control, cfg.lens) if control else None
    result = Result(config=cfg, n=len(questions), chat=cfg.lens.chat,
                    components={c: Curve(lens.accuracy(c), lens.mass(c)) for c in lens.probs},
                    best_layer=layer, best_accuracy=lens.accuracy()[layer],
                    final_accuracy=lens.accuracy()[-1], val_accuracy=val.accuracy(),
                    n_val=len(val_questions), format=questions[0].format,
                    control_accuracy=ctrl.accuracy() if ctrl else [], n_control=len(control),
                    control_correct=_layer_bits(ctrl, layer) if ctrl else None,
                    forget_correct=_layer_bits(lens, layer),
                    seconds=round(time.perf_counter() - t0, 1))
    return base.save(result, out)

def _layer_bits(lens: LensResult, layer: int) -> str:
    """Per question, whether the lens at `layer` (resid_post) picks the answer."""
    return bits(lens.probs["resid_post"][layer].argmax(-1) == lens.answers)


def _lens_question(pr, cfg: Config) -> float:
    """`interp plan`'s probe: seconds per question read through the lens at every layer."""
    questions = pr.data.questions("forget_test")[: cfg.lens.batch_size]
    return timing.timed_calls(lambda: (logit_lens(pr.model, questions, cfg.lens),
                                       len(questions))[1], pr.steps, pr.device)


def probes(cfg: Config) -> dict[str, StepProbe]:
    """How `interp plan` times the kinds `cost` counts (`interp.cost`)."""
    return {"lens": StepProbe("question read", _lens_question, knob="a smaller lens batch_size")}


SPEC = AttackSpec(
    "lens", order=30, on_original=True,
    summary="logit lens: forget accuracy read off every layer",
    presets={"smoke": Config(limit=200), "laptop": Config(limit=200), "paper": Config(limit=None)},
    budgets={"quick": Config(limit=100), "full": Config(limit=200)})
