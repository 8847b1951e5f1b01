"""Weight quantization as an attack (Zhang et al., ICLR 2025: rounding an unlearned model to 4 bits
can bring forgotten knowledge back, 21% -> 83% on MUSE).

Every attention and MLP matrix of the protected model is rounded to a grid and dequantized back
in place, so every hook and attack still works on the result. Grids, in plain torch, each one a
row of the table:
- round-to-nearest, symmetric, per output channel: 8 and 4 bits;
- round-to-nearest, symmetric, group-wise along the input dimension: 4 bits, groups of 64, 128;
- shaped like GGUF's Q4_1 (the embedded model's own format): 4 bits, asymmetric (scale and
  minimum per group of 32, both stored as float16).
The matrices are grouped in the layout of the checkpoint (output rows, input columns), so a group
is the same 32 numbers a GGUF file groups. The embedded original is itself dequantized from Q4_1,
so 4-bit rounding can snap a protected weight back onto the original's grid: the result reports
the original rounded the same way (a reference row), the relative Frobenius norm of the change,
and the share of the weights the protection changed that return exactly to their original value.
The grid is chosen on the validation split; the reported numbers are on the test split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.attacks import base
from interp.attacks.base import AttackSpec, Measured, Row
from interp.attacks.sets import (
    best_on_val,
    option_bars,
    reference_rows,
    scorer_of,
    test_and_val,
)
from interp.cost import StepProbe, capped
from interp.data.folder import as_data
from interp.errors import InterpError
from interp.model.state import copy_model


@dataclass(frozen=True)
class Grid:
    """A quantization grid: bits, symmetric or asymmetric, group size along the input dimension
    (None: one group per output channel), and scales stored as float16 (GGUF)."""

    bits: int
    symmetric: bool = True
    group: int | None = None
    fp16_scales: bool = False


GRIDS = {
    "int8-channel": Grid(8), "int4-channel": Grid(4), "int4-g128": Grid(4, group=128),
    "int4-g64": Grid(4, group=64), "q4_1-g32": Grid(4, symmetric=False, group=32,
                                                    fp16_scales=True),
}

# each weight as (output, input) rows: the layout a checkpoint (and a GGUF file) groups in
LAYOUTS = {"W_Q": "h i k -> (h k) i", "W_K": "h i k -> (h k) i", "W_V": "h i k -> (h k) i",
           "W_O": "h k o -> o (h k)", "W_in": "i o -> o i", "W_gate": "i o -> o i",
           "W_out": "i o -> o i"}


def quantize_rows(w: Float[Tensor, "out inp"], grid: Grid) -> Float[Tensor, "out inp"]:
    """`w` rounded to `grid` and dequantized (same shape and dtype); computed in float32. Where
    the group size does not divide the input dimension, the remainder is one shorter group."""
    x = w.float()
    out_dim, in_dim = x.shape
    g = grid.group or in_dim
    if in_dim % g:  # a last, shorter group (SmolLM2's 576 = 4 x 128 + 64)
        cut = in_dim - in_dim % g
        return torch.cat([quantize_rows(w[:, :cut], grid),
                          quantize_rows(w[:, cut:], replace(grid, group=None))], dim=1)
    x = einops.rearrange(x, "o (n g) -> o n g", g=g)
    if grid.symmetric:
        qmax = 2 ** (grid.bits - 1) - 1
        scale = x.abs().amax(-1, keepdim=True) / qmax
        if grid.fp16_scales:
            scale = scale.half().float()
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.round(x / safe).clamp(-qmax, qmax)
        y = q * scale
    else:
        levels = 2 ** grid.bits - 1
        low, high = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        scale = (high - low) / levels
        if grid.fp16_scales:
            scale, low = scale.half().float(), low.half().float()
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.round((x - low) / safe).clamp(0, levels)
        y = q * scale + low
    return einops.rearrange(y, "o n g -> o (n g)").to(w.dtype)


def quantized_weights(model: HookedTransformer) -> dict[str, str]:
    """Parameter name -> its layout pattern, for every attention and MLP matrix."""
    out = {}
    for name, _ in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1].lstrip("_")
        if name.startswith("blocks.") and leaf in LAYOUTS:
            out[name] = LAYOUTS[leaf]
    return out


@torch.no_grad()
def quantize_model(model: HookedTransformer, grid: Grid) -> None:
    """Round every attention and MLP matrix of `model` to `grid`, in place."""
    params = dict(model.named_parameters())
    for name, pattern in quantized_weights(model).items():
        p = params[name]
        rows = einops.rearrange(p.data, pattern)
        back = pattern.split("->")[1] + " -> " + pattern.split("->")[0]
        sizes = _sizes(pattern, p.shape)
        p.data.copy_(einops.rearrange(quantize_rows(rows, grid), back, **sizes))


def _sizes(pattern: str, shape) -> dict[str, int]:
    names = pattern.split("->")[0].split()
    return {n: int(s) for n, s in zip(names, shape) if n not in ("i",)}


@torch.no_grad()
def weight_change(before: HookedTransformer, after: HookedTransformer,
                  original: HookedTransformer | None = None) -> tuple[float, float | None]:
    """(relative Frobenius norm of after - before over the quantized matrices, the share of the
    weights that `before` changed from `original` which `after` puts back exactly)."""
    a, b = dict(before.named_parameters()), dict(after.named_parameters())
    o = dict(original.named_parameters()) if original is not None else None
    diff = norm = 0.0
    changed = returned = 0
    for name in quantized_weights(before):
        x, y = a[name].double(), b[name].double()
        diff += float((y - x).pow(2).sum())
        norm += float(x.pow(2).sum())
        if o is not None and o[name].shape == a[name].shape:
            moved = a[name] != o[name]
            changed += int(moved.sum())
            returned += int((moved & (b[name] == o[name])).sum())
    share = None if o is None or changed == 0 else returned / changed
    return (diff / norm) ** 0.5 if norm else 0.0, share


@dataclass
class Config:
    """The quantization attack's settings: the grids tried (names of `GRIDS`), questions per split
    (None: all) and questions per batch."""

    grids: tuple[str, ...] = tuple(GRIDS)
    eval_limit: int | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        unknown = [g for g in self.grids if g not in GRIDS]
        if unknown or not self.grids:
            raise InterpError(f"unknown quantization grid(s) {unknown}; use some of "
                              f"{list(GRIDS)}")


@dataclass
class Setting:
    """One grid on the protected model: test and validation scores, the weights' relative change,
    the share of protection-changed weights put back exactly, and the original on the same grid
    (test)."""

    test: Measured
    val: Measured
    relative_change: float
    returned_share: float | None
    original: Measured | None = None


@dataclass
class Result(base.Result):
    """Every grid's scores, the one chosen on validation (`best`) and the no-attack scores."""

    config: Config
    no_attack: Measured
    settings: dict[str, Setting]
    best: str
    format: str = "cloze"
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    figure_stem: ClassVar[str] = "quantize"

    def rows(self, model: str) -> list[Row]:
        """The chosen grid's rows (table column), then each grid's rows and the original's on the
        same grid (reference rows, model "original")."""
        b = self.settings[self.best]
        out = base.score_rows(model, "quantize", b.test, self.no_attack, self.format,
                              "quantize (best)", self.best, b.val)
        for name, s in self.settings.items():
            back = ("" if s.returned_share is None else
                    f", {100 * s.returned_share:.1f}% of changed weights back")
            out += base.score_rows(model, f"quantize-{name}", s.test, self.no_attack,
                                   self.format, None,
                                   f"change {100 * s.relative_change:.2f}%{back}", s.val)
        return out + self.reference_rows()

    def reference_rows(self) -> list[Row]:
        """The original on each grid (forget and control, test)."""
        return [r for name, s in self.settings.items() if s.original is not None
                for r in reference_rows(f"quantize-{name}", s.original, self.format)]

    def plot(self):
        """Test forget and control accuracy per grid, beside no attack."""
        return option_bars(self.no_attack, {k: s.test for k, s in self.settings.items()},
                           title="Accuracy after rounding the weights (test)")


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Scores of `run` (`interp.cost`): per grid, validation and test sets, and the original's
    forget and control."""
    f, r = capped(sizes.forget_test, cfg.eval_limit), capped(sizes.retain_test, cfg.eval_limit)
    c = capped(sizes.control_test, cfg.eval_limit)
    v = sum(capped(n, cfg.eval_limit) for n in (sizes.forget_val, sizes.retain_val,
                                                 sizes.control_val))
    return {"score": (f + r + c) + len(cfg.grids) * (v + f + r + c + f + c)}


def run(model: HookedTransformer, data, cfg: Config | None = None, *,
        original: HookedTransformer | None = None, out: Path | None = None,
        progress: bool = True) -> Result:
    """Round the protected model to each grid and score it (the original too, where given); the
    grid is chosen on validation forget accuracy, reported on test."""
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    data = as_data(data)
    t0 = time.perf_counter()
    test, val = test_and_val(data, cfg.eval_limit)

    def scorer(m):
        return scorer_of(m, cfg.batch_size)

    no_attack = test.score(scorer(model))
    settings = {}
    for name in cfg.grids:
        q = copy_model(model)
        quantize_model(q, GRIDS[name])
        change, back = weight_change(model, q, original)
        ref = None
        if original is not None:
            qo = copy_model(original)
            quantize_model(qo, GRIDS[name])
            ref = test.score(scorer(qo), retain=False)
            del qo
        settings[name] = Setting(test.score(scorer(q)), val.score(scorer(q)), change, back, ref)
        del q
    best = best_on_val(settings)
    result = Result(config=cfg, no_attack=no_attack, settings=settings, best=best,
                    format=test.forget[0].format, seconds=round(time.perf_counter() - t0, 1))
    return base.save(result, out)


def probes(cfg: Config) -> dict[str, StepProbe]:
    """How `interp plan` times the kinds `cost` counts (`interp.cost`): only questions scored,
    which the plan times for every preset."""
    return {}


SPEC = AttackSpec(
    "quantize", order=55, needs_original=True,
    summary="round the weights to 8 and 4 bits (per channel, group-wise, GGUF Q4_1-shaped)",
    presets={"smoke": Config(grids=("int8-channel", "int4-channel", "int4-g64")),
             "laptop": Config(eval_limit=200), "paper": Config()},
    budgets={"quick": Config(grids=("int4-channel", "q4_1-g32"), eval_limit=100),
             "full": Config(eval_limit=200)})
