"""Training noise is not question noise: the finetuning attack's forget cells again at other seeds.

A trained cell's number depends on its seed (which k statements, the adapters' initialization, the
batch order) as well as on the questions: the same seed on two CPU types moved NPO's `ft
forget-k50` from 99.0 to 93.0. This attack trains the finetuning attack's `forget-kK` cells again
at further seeds, with everything else as the preset's finetuning config, and reports each seed's
test rows (`finetune-forget-kK-seedS`); the table shows the spread over these seeds and the
finetuning attack's own (seed 0) cell (`interp.pipelines.report.seed_spread`). Each seed is a
finetuning run of its own folder, so an interrupted run resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from transformer_lens import HookedTransformer

from interp.attacks import base, finetune
from interp.attacks.base import AttackSpec, Row
from interp.cost import StepProbe
from interp.errors import InterpError


@dataclass
class Config:
    """The seed spread's settings: the finetuning config it varies (only its forget cells run),
    the k of the cells retrained, and the further seeds."""

    finetune: finetune.Config = field(default_factory=finetune.Config)
    forget_k: tuple[int, ...] = (10, 50)
    seeds: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        if not self.seeds or not self.forget_k:
            raise InterpError("the seed spread needs at least one seed and one forget k")


def seed_config(cfg: Config, seed: int) -> finetune.Config:
    """The finetuning config of one seed: only the forget-kK cells, nothing else."""
    return replace(cfg.finetune, seed=seed, forget_k=tuple(cfg.forget_k), unrelated_n=(),
                   placebo_k=())


@dataclass
class Result(base.Result):
    """Per seed, the finetuning result of its forget cells."""

    config: Config
    runs: dict[str, finetune.Result]  # str(seed) -> result
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    figure_stem: ClassVar[str] = "seeds"

    def rows(self, model: str) -> list[Row]:
        """Each seed's forget, retain and control rows, named `finetune-forget-kK-seedS`."""
        out = []
        for seed, r in self.runs.items():
            for row in r.rows(model):
                out.append(replace(row, attack=f"{row.attack}-seed{seed}", column=None))
        return out

    def plot(self):
        """Test forget accuracy per cell, one marker per seed."""
        from interp.plots import bar_chart

        names = [f"forget-k{k}" for k in self.config.forget_k]
        series = {f"seed {s}": [r.cells[n].forget for n in names]
                  for s, r in self.runs.items()}
        n = next(iter(self.runs.values())).no_attack.n_forget
        return bar_chart(names, series, title="Forget accuracy (test) of the finetuning "
                         "attack's forget cells at other seeds", n={k: n for k in series})


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Every seed's finetuning run (`finetune.cost`)."""
    total: dict[str, int] = {}
    for s in cfg.seeds:
        for k, v in finetune.cost(seed_config(cfg, s), sizes).items():
            total[k] = total.get(k, 0) + v
    return total


def run(model: HookedTransformer, data, cfg: Config | None = None, *, original=None,
        out: Path | None = None, progress: bool = True) -> Result:
    """The forget cells of the finetuning attack at each further seed."""
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    t0 = time.perf_counter()
    runs = {str(s): finetune.run(model, data, seed_config(cfg, s),
                                 out=Path(out) / f"seed-{s}" if out is not None else None,
                                 progress=progress) for s in cfg.seeds}
    return base.save(Result(config=cfg, runs=runs, seconds=round(time.perf_counter() - t0, 1)),
                     out)


def probes(cfg: Config) -> dict[str, StepProbe]:
    """How `interp plan` times the kinds `cost` counts: the finetuning attack's probes."""
    return finetune.probes(cfg.finetune)


SPEC = AttackSpec(
    "seeds", order=12,
    summary="the finetuning attack's forget cells again at other seeds (training noise)",
    presets={"smoke": Config(finetune=finetune.SPEC.presets["smoke"], forget_k=(6,),
                             seeds=(1,)),
             "extended": Config(finetune=finetune.SPEC.presets["laptop"])})
