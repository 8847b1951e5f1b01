"""A toy attack in one file, to show the shape: zero one block's MLP output matrix at a time,
pick the block that recovers the most forget accuracy, report it."""

from dataclasses import dataclass, field
from typing import ClassVar

import torch

import interp
from interp.attacks import base
from interp.model.hooks import MLP_OUT, mlp_weight_name

SPEC = base.AttackSpec("zero-mlp", order=60, summary="zero one block's MLP output")


@dataclass
class Config:
    limit: int = 40  # questions per split


@dataclass
class Result(base.Result):
    config: Config
    per_layer: list[float]  # forget accuracy with each block's MLP output zeroed
    best_layer: int
    no_attack: base.Baseline
    best: base.Scores
    format: str = "cloze"
    figures: list[str] = field(default_factory=list)
    figure_stem: ClassVar[str] = "zero_mlp"

    def rows(self, model):
        return base.score_rows(model, SPEC.name, self.best, self.no_attack, self.format,
                               "zero MLP", f"L{self.best_layer}")

    def plot(self):
        from interp.plots import layer_lines

        return layer_lines({"forget": self.per_layer}, title="Zeroing one block's MLP output")


def run(model, data, cfg=None, *, original=None, out=None, progress=True):
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    data = interp.DataFolder(data)
    forget = data.questions("forget_eval", limit=cfg.limit)
    retain = data.questions("retain_eval", limit=cfg.limit)

    def acc(questions, layer=None):
        if layer is None:
            return interp.evaluate(model, questions, progress=False).accuracy
        weight = mlp_weight_name(layer, MLP_OUT)
        mask = torch.ones_like(dict(model.named_parameters())[weight], dtype=torch.bool)
        with interp.pruned(model, {weight: mask}):
            return interp.evaluate(model, questions, progress=False).accuracy

    per_layer = [acc(forget, layer) for layer in range(model.cfg.n_layers)]
    best = max(range(len(per_layer)), key=per_layer.__getitem__)
    result = Result(cfg, per_layer, best,
                    base.Baseline(acc(forget), acc(retain), len(forget), len(retain)),
                    base.Scores(per_layer[best], acc(retain, best)), forget[0].format)
    return base.save(result, out)
