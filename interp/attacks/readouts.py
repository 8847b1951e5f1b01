"""What the fitted readouts share (`interp.attacks.tuned_lens`, `interp.attacks.probe`): every
layer's residual at the last position of each question, the four candidates' logits read from a
residual through the final norm and the unembedding, the first layer a protection edited, and the
per-layer curves with the layer chosen on validation at or after that first edited layer.

Layers before a protection's first edited layer are the original's, bit for bit: a readout there
returns the original's accuracy whatever the protection did, so it proves nothing. The headline
layer is chosen among the layers at or after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp import timing
from interp.activations import iter_activations
from interp.cost import StepProbe
from interp.data.questions import Question
from interp.model.hooks import layer_hook_names
from interp.plots import layer_lines
from interp.results import bits
from interp.scoring import EvalConfig, encode_all, letter_rule


@dataclass
class Residuals:
    """Questions' residuals after every block at the last position (float32, on the model's
    device), their candidates' token ids and answers."""

    resid: Float[Tensor, "n_layers n d"]
    candidates: Int[Tensor, "n 4"]
    answers: Int[Tensor, "n"]  # noqa: F821

    def __len__(self) -> int:
        return int(self.answers.shape[0])


@torch.no_grad()
def last_residuals(model: HookedTransformer, questions: Sequence[Question], *,
                   chat: bool = False, batch_size: int = 16) -> Residuals:
    """Every layer's `resid_post` at each question's last position (the scorer's prompt)."""
    encoded = encode_all(model, questions, EvalConfig(chat=chat, letter_ids=letter_rule(model)))
    names = layer_hook_names(model, "resid_post")
    out = torch.empty((len(names), len(encoded), model.cfg.d_model), device=model.cfg.device)
    for batch in iter_activations(model, [e.ids for e in encoded], names,
                                  batch_size=batch_size):
        out[:, batch.rows.start:batch.rows.stop] = batch.acts.float()
    cand = torch.tensor([e.candidates for e in encoded], device=model.cfg.device)
    return Residuals(out, cand, torch.tensor([q.answer for q in questions],
                                             device=model.cfg.device))


def normed(model: HookedTransformer, resid: Tensor) -> Tensor:
    """The final norm of `resid` (any leading shape), in float32."""
    return model.ln_final(resid.to(model.cfg.dtype)).float()


def candidate_logits(model: HookedTransformer, resid: Float[Tensor, "... n d"],
                     candidates: Int[Tensor, "n 4"]) -> Float[Tensor, "... n 4"]:
    """The candidates' logits of residuals (before the final norm) through the final norm and
    the unembedding: `readout` restricted to four columns per question."""
    return normed_logits(model, normed(model, resid), candidates)


def normed_logits(model: HookedTransformer, x: Float[Tensor, "... n d"],
                  candidates: Int[Tensor, "n 4"]) -> Float[Tensor, "... n 4"]:
    """The candidates' logits of already-normed residuals (the unembedding's four columns)."""
    w = model.W_U.float()[:, candidates]  # (d, n, 4)
    logits = einops.einsum(x, w, "... n d, d n c -> ... n c")
    b = getattr(model, "b_U", None)
    return logits + b.float()[candidates] if b is not None else logits


def first_edited_layer(model: HookedTransformer, original: HookedTransformer | None) -> int:
    """The first block whose weights differ from the original's (0 without an original, or when
    the embedding differs; the number of layers when nothing differs)."""
    if original is None:
        return 0
    mine, theirs = model.state_dict(), original.state_dict()
    embed = [k for k in mine if not k.startswith("blocks.") and "embed" in k]
    if any(not torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in embed):
        return 0
    for layer in range(model.cfg.n_layers):
        keys = [k for k in mine if k.startswith(f"blocks.{layer}.")]
        if any(not torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in keys):
            return layer
    return model.cfg.n_layers


def accuracy_per_layer(logits: Float[Tensor, "L n 4"], answers: Tensor) -> list[float]:
    """Per layer, the share of questions whose highest candidate is the answer."""
    return (logits.argmax(-1) == answers[None]).double().mean(-1).tolist()


def layer_bits(logits: Float[Tensor, "L n 4"], answers: Tensor, layer: int) -> str:
    """Per question at `layer`: "1" right, "0" wrong."""
    return bits(logits[layer].argmax(-1).cpu() == answers.cpu())


def choose_layer(val: Sequence[float], first: int) -> int:
    """The layer at or after `first` with the best validation accuracy (ties: the earlier)."""
    first = min(first, len(val) - 1)
    return max(range(first, len(val)), key=lambda i: (val[i], -i))


@dataclass
class Curves:
    """Per layer: test forget, retain and control accuracy and validation forget accuracy."""

    forget: list[float]
    retain: list[float]
    val: list[float]
    control: list[float] = field(default_factory=list)


def difference_lines(results: dict, attr: str, title: str):
    """Forget accuracy per layer (`getattr(result, attr).forget`) minus the original's, one line
    per protected model (the original's own line where there is no original)."""
    base_ = results.get("original")
    lines = {}
    for m, r in results.items():
        ys = getattr(r, attr).forget
        if base_ is None or m == "original":
            lines[m] = ys
        else:
            lines[f"{m} − original"] = [a - b for a, b in zip(ys, getattr(base_, attr).forget)]
    return layer_lines(lines, chance=None, ytitle="forget accuracy (minus the original's)",
                       title=f"{title}: forget accuracy per layer, protected minus original")


def readout_probes(batch_size: int) -> dict[str, StepProbe]:
    """How `interp plan` times the "readout" kind (`interp.cost`): seconds per question whose
    residuals are read at every layer."""

    def measure(pr, cfg) -> float:
        questions = pr.data.questions("forget_test")[:batch_size]
        return timing.timed_calls(lambda: (last_residuals(pr.model, questions),
                                           len(questions))[1], pr.steps, pr.device)

    return {"readout": StepProbe("question read", measure, knob="a smaller batch_size")}
