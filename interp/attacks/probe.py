"""Linear probes for the answer (after Lynch et al. 2024 and Patil et al. 2024).

At each layer the residual at the last position, through the final norm (h̃_ℓ), is mapped by
W = I + ΔW onto the right answer's unembedding row u_y; ΔW is the ridge solution
ΔW = argmin ‖H̃ (I + ΔW) − U‖² + λ‖ΔW‖², in float64 (its dual form: H̃ᵀ (H̃ H̃ᵀ + λI)⁻¹ (U − H̃)).
A question's prediction is argmax over its four candidates c of ⟨W h̃_ℓ, u_c⟩; at ΔW = 0 this
is the logit lens without the unembedding bias. Trained on the protected model's training-split
forget questions; the layer (at or after the protection's first edited layer,
`interp.attacks.readouts`) and λ chosen on validation; reported on test. The same probe on the
original gives the ceiling; on the never-known control it is the floor: a probe that "knows"
never-known facts reads something other than the knowledge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.attacks import base
from interp.attacks.base import AttackSpec, Row
from interp.attacks.readouts import (
    Curves,
    Residuals,
    accuracy_per_layer,
    choose_layer,
    difference_lines,
    first_edited_layer,
    last_residuals,
    layer_bits,
    normed,
    readout_probes,
)
from interp.attacks.sets import QuestionSets
from interp.cost import StepProbe, capped
from interp.data.folder import as_data
from interp.errors import InterpError
from interp.plots import layer_lines


@dataclass
class Config:
    """Probe settings: the ridge penalties tried (multiples of the mean squared norm of the
    normed residuals), questions per split (None: all), raw or chat prompts, batch size."""

    lambdas: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0, 100.0)
    limit: int | None = None
    chat: bool = False
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.lambdas or any(x <= 0 for x in self.lambdas):
            raise InterpError(f"probe lambdas must be positive, got {list(self.lambdas)}")


def probe_delta(h: Float[Tensor, "n d"], u: Float[Tensor, "n d"], lam: float
                ) -> Float[Tensor, "d d"]:
    """ΔW minimizing ‖h (I + ΔW) − u‖² + λ‖ΔW‖², in float64 (the dual form; n ≤ d is cheap)."""
    h, u = h.double(), u.double()
    gram = h @ h.T
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return h.T @ torch.linalg.solve(gram + lam * eye, u - h)


def probe_logits(model: HookedTransformer, x: Float[Tensor, "n d"], delta: Tensor | None,
                 res: Residuals) -> Float[Tensor, "n 4"]:
    """⟨(I + ΔW) h̃, u_c⟩ for each question's four candidates (`x`: the normed residuals)."""
    mapped = x.double() + (x.double() @ delta if delta is not None else 0.0)
    w = model.W_U.double()[:, res.candidates]  # (d, n, 4)
    return einops.einsum(mapped, w, "n d, d n c -> n c")


def fit_layer(model: HookedTransformer, train: Residuals, layer: int, lam: float) -> Tensor:
    """ΔW of one layer on the training residuals (penalty `lam`, absolute)."""
    x = normed(model, train.resid[layer])
    target = model.W_U.float()[:, train.candidates[torch.arange(len(train)),
                                                  train.answers]].T  # (n, d): u_y
    return probe_delta(x, target, lam)


@dataclass
class Result(base.Result):
    """Per layer, accuracy of the probe (λ chosen on validation per layer) on test forget, retain
    and control and on validation forget; the first edited layer and the layer chosen at or after
    it."""

    config: Config
    probe: Curves
    lambdas: list[float]  # per layer, the chosen multiple
    first_edited: int
    layer: int
    n: int
    n_retain: int
    n_train: int
    n_control: int = 0
    n_val: int = 0
    forget_correct: str | None = None
    control_correct: str | None = None
    format: str = "cloze"
    chat: bool = False
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    figure_stem: ClassVar[str] = "probe"

    def rows(self, model: str) -> list[Row]:
        """Forget, retain and control rows at the chosen layer."""
        mode, p = ("chat" if self.chat else "raw"), self.probe
        note = f"L{self.layer} (edits from L{self.first_edited}), λ={self.lambdas[self.layer]:g}"
        rows = [Row(model=model, attack="probe", split="forget", format=self.format, mode=mode,
                    accuracy=p.forget[self.layer], n=self.n, column="probe (best layer)",
                    note=note, val=p.val[self.layer], n_val=self.n_val,
                    correct=self.forget_correct, questions="forget_test"),
                Row(model=model, attack="probe", split="retain", format=self.format, mode=mode,
                    accuracy=p.retain[self.layer], n=self.n_retain)]
        if p.control:
            rows.append(Row(model=model, attack="probe", split="control", format=self.format,
                            mode=mode, accuracy=p.control[self.layer], n=self.n_control,
                            correct=self.control_correct, questions="control_test"))
        return rows

    def plot(self):
        """Per layer: the probe's test forget, retain and control and validation forget."""
        p = self.probe
        lines = {"forget": p.forget, "retain": p.retain, "validation forget": p.val}
        ns = {"forget": self.n, "retain": self.n_retain, "validation forget": self.n_val}
        if p.control:
            lines["control"], ns["control"] = p.control, self.n_control
        return layer_lines(lines, n=ns, title=f"Linear probe for the answer per layer (trained "
                                              f"on {self.n_train}; first edited layer "
                                              f"{self.first_edited})")

    @classmethod
    def plot_models(cls, results: dict[str, "Result"]):
        """Per layer, each protected model's probe forget accuracy minus the original's."""
        return difference_lines(results, "probe", "Probe")


def probe(model: HookedTransformer, data, cfg: Config | None = None, *, original=None,
          progress: bool = True, **settings) -> Result:
    """`run` without a folder, for a notebook: `settings` override the config's fields (e.g.
    `limit=100`); `original` (the model before the protection) sets the first edited layer."""
    from dataclasses import replace

    return run(model, data, replace(cfg or Config(), **settings), original=original,
               progress=progress)


def _fit_all(model, res: dict[str, Residuals], lambdas: Sequence[float]):
    """Per layer: the λ chosen on validation forget and the predictions of every set there."""
    n_layers = res["train"].resid.shape[0]
    preds = {k: [] for k in res if k != "train"}
    chosen = []
    for layer in range(n_layers):
        x = {k: normed(model, r.resid[layer]) for k, r in res.items()}
        scale = float(x["train"].double().pow(2).sum(-1).mean())
        best = None
        for mult in lambdas:
            delta = fit_layer(model, res["train"], layer, mult * scale)
            val = probe_logits(model, x["val"], delta, res["val"]).argmax(-1)
            acc = float((val == res["val"].answers).double().mean())
            if best is None or acc > best[0]:
                best = (acc, mult, delta)
        chosen.append(best[1])
        for k in preds:
            preds[k].append(probe_logits(model, x[k], best[2], res[k]))
    return chosen, {k: torch.stack(v) for k, v in preds.items()}


def run(model: HookedTransformer, data, cfg: Config | None = None, *, original=None,
        out: Path | None = None, progress: bool = True) -> Result:
    """Fit a probe per layer on training forget questions; choose λ per layer and the layer (at
    or after the first edited one) on validation; report the test splits at that layer."""
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    with torch.no_grad():
        return base.save(_fit(model, as_data(data), cfg, original), out)


def _fit(model: HookedTransformer, data, cfg: Config, original) -> Result:
    t0 = time.perf_counter()
    test = QuestionSets.load(data, "test", limit=cfg.limit)
    sets = {"train": data.questions("forget_train"), "val": data.questions("forget_val",
                                                                           limit=cfg.limit),
            "forget": test.forget, "retain": test.retain}
    if test.control:
        sets["control"] = test.control
    res = {k: last_residuals(model, qs, chat=cfg.chat, batch_size=cfg.batch_size)
           for k, qs in sets.items()}
    lambdas, logits = _fit_all(model, res, cfg.lambdas)
    acc = {k: accuracy_per_layer(v, res[k].answers) for k, v in logits.items()}
    curves = Curves(acc["forget"], acc["retain"], acc["val"], acc.get("control", []))
    first = first_edited_layer(model, original)
    layer = choose_layer(curves.val, first)
    result = Result(config=cfg, probe=curves, lambdas=lambdas, first_edited=first, layer=layer,
                    n=len(test.forget), n_retain=len(test.retain), n_train=len(sets["train"]),
                    n_control=len(test.control), n_val=len(sets["val"]),
                    forget_correct=layer_bits(logits["forget"], res["forget"].answers, layer),
                    control_correct=(layer_bits(logits["control"], res["control"].answers, layer)
                                     if "control" in logits else None),
                    format=test.forget[0].format, chat=cfg.chat,
                    seconds=round(time.perf_counter() - t0, 1))
    return result


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Questions read at every layer by `run` (`interp.cost`)."""
    return {"readout": sizes.forget_train + capped(sizes.forget_val, cfg.limit)
            + capped(sizes.forget_test, cfg.limit) + capped(sizes.retain_test, cfg.limit)
            + capped(sizes.control_test, cfg.limit)}


def probes(cfg: Config) -> dict[str, StepProbe]:
    """How `interp plan` times the kinds `cost` counts (`interp.cost`)."""
    return readout_probes(cfg.batch_size)


SPEC = AttackSpec(
    "probe", order=34, on_original=True, needs_original=True,
    summary="linear probe: ridge from each layer's residual to the answer's unembedding row",
    presets={"smoke": Config(limit=200), "laptop": Config(limit=200),
             "paper": Config(limit=None)},
    budgets={"quick": Config(limit=100), "full": Config(limit=200)})
