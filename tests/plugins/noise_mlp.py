"""A toy protection in one file, to show the shape: add Gaussian noise to one block's MLP output
matrix (no training), then the shared measurements before and after."""

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from interp.model.hooks import MLP_OUT, mlp_weight_name
from interp.protections.base import ProtectionResult, ProtectionSpec, train_and_measure


@dataclass
class Config:
    layer: int = 1
    scale: float = 0.5  # noise std, relative to the matrix's own std
    seed: int = 0


@dataclass
class Result(ProtectionResult):
    method_name: ClassVar[str] = "noise-mlp"
    config: Config = field(default_factory=Config)


def train(model, data, cfg, run_dir=None, progress=True):
    """The protection itself, in place: (losses, extra result fields)."""
    weight = dict(model.named_parameters())[mlp_weight_name(cfg.layer, MLP_OUT)]
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        noise = torch.randn(weight.shape, generator=gen).to(weight.device, weight.dtype)
        weight.add_(cfg.scale * weight.std() * noise)
    return [], {}


def cost(cfg, sizes):
    return {}  # no training steps; the shared before/after scores are counted by the caller


def probes(cfg):
    return {}  # nothing of its own for `interp plan` to time


def run(model, data, cfg=None, *, out=None, progress=True, before=None, about=None):
    return train_and_measure(model, data, cfg or Config(), train, Result, out=out,
                             progress=progress, before=before, about=about)


SPEC = ProtectionSpec("noise-mlp", order=90, summary="noise on one block's MLP output",
                      presets={"smoke": Config(layer=1)})
