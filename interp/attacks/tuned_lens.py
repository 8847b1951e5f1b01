"""Tuned lens (after Belrose et al. 2023): one affine translator per layer, from that layer's
residual to the final layer's, read through the final norm and the unembedding.

The translators are fitted on the unrelated corpus only (no forget or retain fact reaches them),
for each model on its own residuals, in closed form: ridge regression in float64 of the final
residual (before the final norm) minus the layer's, on the layer's residual and a constant,
T_ℓ(h) = h + h W_ℓ + b_ℓ, the penalty on W_ℓ only, λ chosen per layer by the held-out squared
error. At W = 0, b = 0 the tuned lens is the logit lens. Reported per layer on held-out unrelated
tokens: KL(model ‖ lens) of the logit lens and the tuned lens. As an attack: the forget, retain and
control accuracy per layer through the translators, the layer chosen on validation at or after the
protection's first edited layer (`interp.attacks.readouts`), reported on test. (A full-vocabulary
KL fit costs about 5 GFLOP per token per model on SmolLM2; it is not implemented.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.activations import iter_activations
from interp.attacks import base
from interp.attacks.base import AttackSpec, Row
from interp.attacks.readouts import (
    Curves,
    accuracy_per_layer,
    candidate_logits,
    choose_layer,
    difference_lines,
    first_edited_layer,
    last_residuals,
    layer_bits,
    readout_probes,
)
from interp.attacks.sets import QuestionSets
from interp.cost import StepProbe, capped
from interp.data.folder import as_data
from interp.errors import InterpError
from interp.model.hooks import layer_hook_names
from interp.model.state import get_tokenizer
from interp.plots import layer_lines


@dataclass
class Config:
    """Tuned-lens settings: unrelated-corpus tokens to fit on and to hold out (first position of
    each text excluded), tokens per text at most, the ridge penalties tried (multiples of the mean
    squared residual norm), questions per split (None: all), raw or chat prompts, batch size."""

    fit_tokens: int = 4096
    heldout_tokens: int = 256
    max_len: int = 64
    lambdas: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    limit: int | None = None
    chat: bool = False
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.fit_tokens < 2 or self.heldout_tokens < 1 or self.max_len < 2:
            raise InterpError("tuned lens fit_tokens, heldout_tokens and max_len must be "
                              "positive (fit_tokens at least 2)")
        if not self.lambdas or any(x <= 0 for x in self.lambdas):
            raise InterpError(f"tuned lens lambdas must be positive, got {list(self.lambdas)}")


@dataclass
class Translators:
    """Per layer an affine map of the residual onto the final residual: T(h) = h + h W + b."""

    weight: Float[Tensor, "n_layers d d"]
    bias: Float[Tensor, "n_layers d"]
    lambdas: list[float]  # the chosen penalty per layer (absolute)

    def __call__(self, resid: Float[Tensor, "n_layers n d"]) -> Float[Tensor, "n_layers n d"]:
        """Each layer's residuals through its translator."""
        w, b = self.weight.to(resid.device), self.bias.to(resid.device)
        return resid + torch.einsum("lnd,lde->lne", resid, w) + b[:, None]

    @classmethod
    def identity(cls, n_layers: int, d: int) -> "Translators":
        """W = 0, b = 0: the logit lens."""
        return cls(torch.zeros(n_layers, d, d), torch.zeros(n_layers, d), [0.0] * n_layers)


def corpus_residuals(model: HookedTransformer, texts: Sequence[str], tokens: int, max_len: int,
                     batch_size: int = 16) -> Float[Tensor, "n_layers_plus_1 t d"]:
    """Every layer's `resid_post` at the texts' positions (each text's first excluded, at most
    `max_len` tokens a text), `tokens` positions in all (float32, on the model's device)."""
    tok = get_tokenizer(model)
    seqs, have = [], 0
    for text in texts:
        ids = tok(text)["input_ids"][:max_len]
        if len(ids) < 2:
            continue
        seqs.append(ids)
        have += len(ids) - 1
        if have >= tokens:
            break
    if have < tokens:
        raise InterpError(f"the unrelated corpus has {have} tokens; the tuned lens asks for "
                          f"{tokens}")
    names = layer_hook_names(model, "resid_post")
    parts = [batch.acts.float() for batch in iter_activations(
        model, seqs, names, batch_size=batch_size, positions="all", skip_first=1)]
    return torch.cat(parts, 1)[:, :tokens]


def ridge(h: Float[Tensor, "t d"], y: Float[Tensor, "t d"], lams: Sequence[float]
          ) -> list[tuple[Tensor, Tensor]]:
    """Per λ, (W, b) minimizing ‖h W + b − y‖² + λ‖W‖² in float64 (b unpenalized)."""
    h, y = h.double(), y.double()
    mh, my = h.mean(0), y.mean(0)
    hc, yc = h - mh, y - my
    gram, cross = hc.T @ hc, hc.T @ yc
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    out = []
    for lam in lams:
        w = torch.linalg.solve(gram + lam * eye, cross)
        out.append((w, my - mh @ w))
    return out


def fit_translators(resid: Float[Tensor, "L t d"], heldout: Float[Tensor, "L m d"],
                    lambdas: Sequence[float]) -> Translators:
    """Per layer the ridge fit of (final − layer) on the layer, λ (a multiple of the layer's
    mean squared residual norm) chosen by the held-out squared error; the last layer's translator
    is the identity."""
    n_layers, _, d = resid.shape
    weights, biases, chosen = [], [], []
    for layer in range(n_layers):
        if layer == n_layers - 1:
            weights.append(torch.zeros(d, d))
            biases.append(torch.zeros(d))
            chosen.append(0.0)
            continue
        h, y = resid[layer], resid[-1] - resid[layer]
        hh, yh = heldout[layer].double(), (heldout[-1] - heldout[layer]).double()
        scale = float(h.double().pow(2).sum(-1).mean())
        fits = ridge(h, y, [m * scale for m in lambdas])
        errs = [float((hh @ w + b - yh).pow(2).sum(-1).mean()) for w, b in fits]
        i = min(range(len(errs)), key=errs.__getitem__)
        weights.append(fits[i][0].float().cpu())
        biases.append(fits[i][1].float().cpu())
        chosen.append(lambdas[i] * scale)
    return Translators(torch.stack(weights), torch.stack(biases), chosen)


@torch.no_grad()
def heldout_kl(model: HookedTransformer, heldout: Float[Tensor, "L m d"],
               lens: Translators) -> list[float]:
    """Per layer, the mean KL(model's output ‖ lens output) in nats over held-out positions."""
    from interp.model.hooks import readout

    final = readout(model, heldout[-1].to(model.cfg.dtype)).float().log_softmax(-1)
    read = lens(heldout)
    out = []
    for layer in range(heldout.shape[0]):
        q = readout(model, read[layer].to(model.cfg.dtype)).float().log_softmax(-1)
        out.append(float((final.exp() * (final - q)).sum(-1).mean()))
    return out


@dataclass
class Result(base.Result):
    """Per layer, accuracy through the tuned lens and through the logit lens (the same residuals),
    held-out KL of both, the first edited layer and the layer chosen at or after it."""

    config: Config
    tuned: Curves
    logit: Curves
    kl_tuned: list[float]
    kl_logit: list[float]
    first_edited: int
    layer: int  # chosen on validation at or after `first_edited`
    n: int
    n_retain: int
    n_control: int = 0
    n_val: int = 0
    lambdas: list[float] = field(default_factory=list)
    forget_correct: str | None = None  # per test question at the chosen layer
    control_correct: str | None = None
    format: str = "cloze"
    chat: bool = False
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    translators: Translators | None = base.not_saved()
    figure_stem: ClassVar[str] = "tuned_lens"

    def rows(self, model: str) -> list[Row]:
        """Forget, retain and control rows at the chosen layer."""
        mode, t = ("chat" if self.chat else "raw"), self.tuned
        note = f"L{self.layer} (edits from L{self.first_edited})"
        rows = [Row(model=model, attack="tuned_lens", split="forget", format=self.format,
                    mode=mode, accuracy=t.forget[self.layer], n=self.n,
                    column="tuned lens (best layer)", note=note, val=t.val[self.layer],
                    n_val=self.n_val, correct=self.forget_correct, questions="forget_test"),
                Row(model=model, attack="tuned_lens", split="retain", format=self.format,
                    mode=mode, accuracy=t.retain[self.layer], n=self.n_retain)]
        if t.control:
            rows.append(Row(model=model, attack="tuned_lens", split="control",
                            format=self.format, mode=mode, accuracy=t.control[self.layer],
                            n=self.n_control, correct=self.control_correct,
                            questions="control_test"))
        return rows

    def plot(self):
        """Per layer: forget, retain and control accuracy through the tuned and the logit lens."""
        lines, ns = {}, {}
        for lens, c in (("tuned", self.tuned), ("logit", self.logit)):
            for split, ys, n in (("forget", c.forget, self.n), ("retain", c.retain, self.n_retain),
                                 ("control", c.control, self.n_control)):
                if ys:
                    lines[f"{lens} lens: {split}"], ns[f"{lens} lens: {split}"] = ys, n
        return layer_lines(lines, n=ns, title=f"Tuned lens beside the logit lens (test; first "
                                              f"edited layer {self.first_edited})")

    @classmethod
    def plot_models(cls, results: dict[str, "Result"]):
        """Per layer, each protected model's tuned-lens forget accuracy minus the original's
        (the original's own line where there is no original)."""
        return difference_lines(results, "tuned", "Tuned lens")


def _curves(model, lens: Translators, sets: dict, first_layer: int):
    logits = {k: candidate_logits(model, lens(r.resid), r.candidates) for k, r in sets.items()}
    acc = {k: accuracy_per_layer(v, sets[k].answers) for k, v in logits.items()}
    curves = Curves(acc["forget"], acc["retain"], acc["val"], acc.get("control", []))
    return curves, logits


def tuned_lens(model: HookedTransformer, data, cfg: Config | None = None, *, original=None,
               progress: bool = True, **settings) -> Result:
    """`run` without a folder, for a notebook: `settings` override the config's fields (e.g.
    `limit=100`); `original` (the model before the protection) sets the first edited layer."""
    from dataclasses import replace

    return run(model, data, replace(cfg or Config(), **settings), original=original,
               progress=progress)


def run(model: HookedTransformer, data, cfg: Config | None = None, *, original=None,
        out: Path | None = None, progress: bool = True) -> Result:
    """Fit the translators on the unrelated corpus; read forget, retain and control per layer;
    choose the layer on validation at or after the first edited layer; report it on test."""
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    with torch.no_grad():
        return base.save(_fit(model, as_data(data), cfg, original), out)


def _fit(model: HookedTransformer, data, cfg: Config, original) -> Result:
    t0 = time.perf_counter()
    texts = data.corpus("unrelated")
    resid = corpus_residuals(model, texts, cfg.fit_tokens + cfg.heldout_tokens, cfg.max_len,
                             cfg.batch_size)
    fit, held = resid[:, :cfg.fit_tokens], resid[:, cfg.fit_tokens:]
    lens = fit_translators(fit, held, cfg.lambdas)
    identity = Translators.identity(*lens.bias.shape)
    test = QuestionSets.load(data, "test", limit=cfg.limit)
    sets = {"forget": test.forget, "retain": test.retain,
            "val": data.questions("forget_val", limit=cfg.limit)}
    if test.control:
        sets["control"] = test.control
    res = {k: last_residuals(model, qs, chat=cfg.chat, batch_size=cfg.batch_size)
           for k, qs in sets.items()}
    first = first_edited_layer(model, original)
    tuned, logits = _curves(model, lens, res, first)
    logit, _ = _curves(model, identity, res, first)
    layer = choose_layer(tuned.val, first)
    result = Result(config=cfg, tuned=tuned, logit=logit, kl_tuned=heldout_kl(model, held, lens),
                    kl_logit=heldout_kl(model, held, identity), first_edited=first, layer=layer,
                    n=len(test.forget), n_retain=len(test.retain), n_control=len(test.control),
                    n_val=len(sets["val"]), lambdas=lens.lambdas,
                    forget_correct=layer_bits(logits["forget"], res["forget"].answers, layer),
                    control_correct=(layer_bits(logits["control"], res["control"].answers, layer)
                                     if "control" in logits else None),
                    format=test.forget[0].format, chat=cfg.chat,
                    seconds=round(time.perf_counter() - t0, 1), translators=lens)
    return result


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Questions read by `run` (`interp.cost`; the corpus pass is about as many prompts of
    `max_len` tokens as the fit needs, counted as lens questions)."""
    texts = -(-(cfg.fit_tokens + cfg.heldout_tokens) // (cfg.max_len - 1))
    return {"readout": capped(sizes.forget_test, cfg.limit) + capped(sizes.retain_test, cfg.limit)
            + capped(sizes.control_test, cfg.limit) + capped(sizes.forget_val, cfg.limit)
            + texts}


def probes(cfg: Config) -> dict[str, StepProbe]:
    """How `interp plan` times the kinds `cost` counts (`interp.cost`)."""
    return readout_probes(cfg.batch_size)


SPEC = AttackSpec(
    "tuned_lens", order=32, on_original=True, needs_original=True,
    summary="tuned lens: per-layer affine translators fitted on unrelated text, read per layer",
    presets={"smoke": Config(fit_tokens=512, heldout_tokens=64, limit=200),
             "laptop": Config(heldout_tokens=128, limit=200),
             "paper": Config(fit_tokens=16384, limit=None)},
    budgets={"quick": Config(limit=100), "full": Config(limit=200)})
