"""A toy attack in one file, to show the shape: zero one block's MLP output matrix at a time,
choose the block on the validation split, report it on the test split."""

from dataclasses import dataclass, field
from typing import ClassVar

import torch

import interp
from interp.attacks import base
from interp.cost import capped
from interp.model.hooks import MLP_OUT, mlp_weight_name


@dataclass
class Config:
    limit: int = 40  # questions per split


@dataclass
class Result(base.Result):
    config: Config
    val_per_layer: list[float]  # validation forget accuracy with each block's MLP output zeroed
    best_layer: int  # chosen on validation
    no_attack: base.Baseline  # test split
    best: base.Scores  # test split, the chosen block zeroed
    val: base.Measured  # validation split, the chosen block zeroed
    format: str = "cloze"
    figures: list[str] = field(default_factory=list)
    figure_stem: ClassVar[str] = "zero_mlp"

    def rows(self, model):
        return base.score_rows(model, SPEC.name, self.best, self.no_attack, self.format,
                               "zero MLP", f"L{self.best_layer}", val=self.val)

    def plot(self):
        from interp.plots import layer_lines

        return layer_lines({"validation forget": self.val_per_layer},
                           title="Zeroing one block's MLP output")


def cost(cfg, sizes):
    """Questions scored (`interp.cost`): every layer on validation, then both splits twice."""
    val = capped(sizes.forget_val, cfg.limit)
    test = capped(sizes.forget_test, cfg.limit) + capped(sizes.retain_test, cfg.limit)
    return {"score": sizes.n_layers * val + capped(sizes.retain_val, cfg.limit) + val + 2 * test}


def run(model, data, cfg=None, *, original=None, out=None, progress=True):
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    data = interp.DataFolder(data)
    split = {s: data.questions(s, limit=cfg.limit)
             for s in ("forget_val", "retain_val", "forget_test", "retain_test")}

    def acc(name, layer=None):
        if layer is None:
            return interp.evaluate(model, split[name], progress=False).accuracy
        weight = mlp_weight_name(layer, MLP_OUT)
        mask = torch.ones_like(dict(model.named_parameters())[weight], dtype=torch.bool)
        with interp.pruned(model, {weight: mask}):
            return interp.evaluate(model, split[name], progress=False).accuracy

    val_per_layer = [acc("forget_val", layer) for layer in range(model.cfg.n_layers)]
    best = max(range(len(val_per_layer)), key=val_per_layer.__getitem__)
    n = {s: len(q) for s, q in split.items()}
    result = Result(
        cfg, val_per_layer, best,
        base.Baseline(acc("forget_test"), acc("retain_test"), n["forget_test"], n["retain_test"]),
        base.Scores(acc("forget_test", best), acc("retain_test", best)),
        base.Measured(val_per_layer[best], acc("retain_val", best), n["forget_val"],
                      n["retain_val"]),
        split["forget_test"][0].format)
    return base.save(result, out)


SPEC = base.AttackSpec("zero-mlp", order=60, summary="zero one block's MLP output",
                       presets={"smoke": Config(limit=40), "laptop": Config(limit=100)},
                       budgets={"quick": Config(limit=40), "full": Config(limit=100)})
