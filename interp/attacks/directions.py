"""Difference-in-means directions per block, their ablation hooks, the equivalent weight edit,
and the orthogonalization attack built from them.

Variants (the paper's and the official code's):
- two models, same prompts: mean(unlearned) - mean(original), per layer (the paper's main one);
- one model, two prompt sets: mean(forget) - mean(retain or unrelated);
- the first principal component of the activations (or of the paired differences).

Means accumulate in float64 and stream over batches, so memory does not grow with the number of
prompts; dropping outlier tokens (z-score of the distance to the mean above `outlier_z`) takes a
second pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Sequence

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from interp import timing
from interp.activations import iter_activations
from interp.attacks import base
from interp.attacks.ablation import (  # noqa: F401 - the ablation API, re-exported here
    HOOKS,
    LayerDirections,
    ablate_everywhere_hooks,
    ablated,
    ablation_hooks,
    hook_names,
    orthogonalize_weights,
    project_out,
)
from interp.attacks.base import AttackSpec, Baseline, Measured, Row
from interp.attacks.direction_recipes import (
    RECIPES,
    OfficialRecipe,
    check_variants,
    official_means,
    paired_pca,
    token_activations,
)
from interp.attacks.sets import QuestionSets
from interp.cost import StepProbe, capped
from interp.data.folder import as_data
from interp.data.questions import Question
from interp.errors import InterpError
from interp.model.state import copy_model
from interp.plots import layer_lines
from interp.scoring import evaluate


@dataclass
class DirectionsConfig:
    """How directions are computed: the hook point, which positions (every token after the first
    `skip_first`, or the last), the outlier z-score (None or 0: keep every token) and the batch
    size."""

    hook: str = "resid_post"  # the block output by default
    positions: str = "all"  # "all" tokens after skipping `skip_first`, or "last"
    skip_first: int = 1
    outlier_z: float | None = 3.0  # None or 0: keep every token
    batch_size: int = 16


Prompts = Sequence[Question] | Sequence[str] | Sequence[list[int]]


def prompt_ids(model: HookedTransformer, prompts: Prompts) -> list[list[int]]:
    """Token ids of each prompt: a question's stem, a text, or ids as they are."""
    from interp.model.load import get_tokenizer

    tok = get_tokenizer(model)
    return [tok(p.question)["input_ids"] if isinstance(p, Question)
            else tok(p)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]


@torch.no_grad()
def stream_activations(model: HookedTransformer, prompts: Prompts,
                       cfg: DirectionsConfig) -> Iterator[Float[Tensor, "n_layers tokens d"]]:
    """Yield, batch by batch, the chosen hook's activations at the counted positions: every
    token after the first `skip_first` of each prompt, or the last one (`cfg.positions`)."""
    if cfg.positions not in ("all", "last"):
        raise InterpError(f"positions must be 'all' or 'last', got {cfg.positions!r}")
    for batch in iter_activations(model, prompt_ids(model, prompts), hook_names(model, cfg.hook),
                                  batch_size=cfg.batch_size, positions=cfg.positions,
                                  skip_first=cfg.skip_first):
        yield batch.acts  # (n_layers, tokens, d)


@torch.no_grad()
def streaming_mean(model, prompts, cfg: DirectionsConfig,
                   center: Tensor | None = None, max_dist: Tensor | None = None) -> dict:
    """Float64 per-layer mean, and the mean / second moment of the distance to `center`."""
    total, count = None, None
    dist_sum, dist_sq = None, None
    for acts in stream_activations(model, prompts, cfg):
        a = acts.double()
        keep = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device)
        if center is not None:
            dist = (a - center[:, None, :]).norm(dim=-1)  # (n_layers, tokens)
            if max_dist is not None:
                keep = dist <= max_dist[:, None]
            dist_sum = (dist * keep).sum(1) if dist_sum is None else dist_sum + (dist * keep).sum(1)
            sq = (dist**2 * keep).sum(1)
            dist_sq = sq if dist_sq is None else dist_sq + sq
        s = einops.einsum(a, keep.double(), "l t d, l t -> l d")
        total = s if total is None else total + s
        c = keep.sum(1)
        count = c if count is None else count + c
    if total is None or (count == 0).any():
        raise InterpError("no activations to average: give more prompts or lower skip_first")
    out = {"mean": total / count[:, None], "count": count}
    if dist_sum is not None:
        out["dist_mean"] = dist_sum / count
        out["dist_std"] = (dist_sq / count - out["dist_mean"] ** 2).clamp(min=0).sqrt()
    return out


def robust_mean(model, prompts, cfg: DirectionsConfig) -> Tensor:
    """Per-layer mean, dropping tokens whose distance to the mean has a z-score above the cut."""
    prompts = prompt_ids(model, prompts)  # tokenized once for the (up to) three passes
    first = streaming_mean(model, prompts, cfg)
    if cfg.outlier_z is None or cfg.outlier_z <= 0:  # none or 0: keep every token
        return first["mean"]
    stats = streaming_mean(model, prompts, cfg, center=first["mean"])
    cut = stats["dist_mean"] + cfg.outlier_z * stats["dist_std"]
    return streaming_mean(model, prompts, cfg, center=first["mean"], max_dist=cut)["mean"]


def _finish(mean_a: Tensor, mean_b: Tensor, hook: str, variant: str) -> LayerDirections:
    diff = mean_a - mean_b
    norms = diff.norm(dim=-1)
    if not torch.isfinite(norms).all():
        raise InterpError("a difference-in-means direction is not finite; check the activations")
    if (norms == 0).all():
        raise InterpError("every difference-in-means direction is zero: the two sides have the "
                          "same activations")
    # layers before an edit (e.g. below RMU's layer) have no difference: their direction is 0
    unit = torch.where(norms[:, None] > 0, diff / norms.clamp(min=1e-30)[:, None], 0.0)
    return LayerDirections(unit.float(), norms.float(), mean_a, mean_b, hook, variant)


def diff_in_means_models(model_a, model_b, prompts, cfg: DirectionsConfig) -> LayerDirections:
    """mean(model_a) - mean(model_b) on the same prompts (e.g. unlearned - original)."""
    return _finish(robust_mean(model_a, prompts, cfg), robust_mean(model_b, prompts, cfg),
                   cfg.hook, "models")


def diff_in_means_prompts(model, prompts_a, prompts_b, cfg: DirectionsConfig) -> LayerDirections:
    """mean(prompts_a) - mean(prompts_b) in one model (e.g. forget - retain)."""
    return _finish(robust_mean(model, prompts_a, cfg), robust_mean(model, prompts_b, cfg),
                   cfg.hook, "prompts")


@torch.no_grad()
def first_principal_component(model, prompts, cfg: DirectionsConfig) -> LayerDirections:
    """Top eigenvector of the per-layer activation covariance (float64, streamed)."""
    mean = streaming_mean(model, prompts, cfg)["mean"]
    cov = None
    for acts in stream_activations(model, prompts, cfg):
        a = acts.double() - mean[:, None, :]
        c = einops.einsum(a, a, "l t d, l t e -> l d e")
        cov = c if cov is None else cov + c
    _, vecs = torch.linalg.eigh(cov)
    top = vecs[..., -1]  # (n_layers, d)
    # orient each component along the mean, so signs are stable
    sign = torch.sign((top * mean).sum(-1, keepdim=True)).clamp(min=0) * 2 - 1
    top = top * sign
    return LayerDirections(top.float(), torch.ones_like(top[:, 0]).float(), mean,
                           torch.zeros_like(mean), cfg.hook, "pca")


# ---------------------------------------------------------------------------------- the attack
@dataclass
class Config:
    """The orthogonalization attack's settings: how directions are computed, validation questions
    per split for each layer of the sweep, test questions for the final scores (None: all), the
    batch size, and the recipe and variants (`interp.attacks.direction_recipes`)."""

    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    sweep_limit: int = 100  # validation questions per split scored for each layer of the sweep
    eval_limit: int | None = None  # questions per split for the final scores (None: all)
    batch_size: int = 32
    # `interp.attacks.direction_recipes`: how the directions are computed, and which variants;
    # the first variant is the attack's own (ablation, all layers, weight edit), each other one
    # gets its own validation sweep and best-layer ablation
    recipe: str = "toolkit"
    variants: tuple[str, ...] = ("models",)
    official: OfficialRecipe = field(default_factory=OfficialRecipe)
    placebo_seed: int = 0  # the random direction of the placebo row

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise InterpError(f"unknown directions recipe {self.recipe!r}; use one of "
                              f"{list(RECIPES)}")
        self.variants = check_variants(tuple(self.variants))


@dataclass
class Sweep:
    """Validation accuracy after ablating each layer's own direction (one entry per layer)."""

    forget: list[float]
    retain: list[float]
    n_forget: int
    n_retain: int


@dataclass
class VariantResult:
    """Another direction variant's validation sweep, chosen layer and test scores."""

    sweep: Sweep
    best_layer: int
    val: Measured
    ablate_best_layer: Measured
    diff_norms: list[float]


@dataclass
class Result(base.Result):
    """The paper's orthogonalization attack. `diff_norms`: (n_layers,) norms of the raw
    unlearned - original differences; `dirs` (in memory only; `directions.safetensors` on disk)
    the unit directions."""

    config: Config
    n_direction_prompts: int
    diff_norms: list[float]
    sweep: Sweep
    best_layer: int
    no_attack: Baseline
    ablate_best_layer: Measured
    ablate_all_layers: Measured
    orthogonalize_best_everywhere: Measured
    val: dict[str, Measured] = field(default_factory=dict)  # attack -> its validation scores
    recipe: str = "toolkit"
    variant: str = "models"  # the first variant: the one every field above is about
    variants: dict[str, VariantResult] = field(default_factory=dict)  # the other variants
    outliers: list[str] = field(default_factory=list)  # official recipe: removed token strings
    # the placebo: a random unit direction (seeded) ablated at the best layer, the same hook
    placebo: Measured | None = None
    format: str = "cloze"
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    dirs: LayerDirections | None = base.not_saved()
    figure_stem: ClassVar[str] = "ablation_sweep"

    def rows(self, model: str) -> list[Row]:
        """Test rows of the weight edit (the best layer's direction), the best-layer and all-layer
        ablations, and each other variant's best-layer ablation, with their validation scores."""
        out = []
        # "orthogonalize": one direction (the best layer's) removed from every weight that writes
        # to the residual stream; "ablate-best-layer": the paper's per-layer ablation
        for attack, scores, column in (
                ("orthogonalize", self.orthogonalize_best_everywhere, "orthogonalize"),
                ("ablate-best-layer", self.ablate_best_layer, "ablate best layer"),
                ("ablate-all-layers", self.ablate_all_layers, None)):
            note = {"ablate-best-layer": f"L{self.best_layer}",
                    "orthogonalize": f"L{self.best_layer} dir, all layers"}.get(attack)
            out += base.score_rows(model, attack, scores, self.no_attack, self.format, column,
                                   note, self.val.get(attack))
        for name, v in self.variants.items():
            out += base.score_rows(model, f"ablate-best-layer-{name}", v.ablate_best_layer,
                                   self.no_attack, self.format, None, f"L{v.best_layer}", v.val)
        if self.placebo is not None:
            out += base.score_rows(model, "ablate-best-layer-placebo", self.placebo,
                                   self.no_attack, self.format, "placebo: ablate",
                                   f"random direction, L{self.best_layer}")
        return out

    def plot(self):
        """Validation forget and retain accuracy after ablating each layer's direction."""
        forget = "forget (ablate this layer's direction)"
        return layer_lines({forget: self.sweep.forget, "retain": self.sweep.retain},
                           title="Accuracy after ablating each layer's unlearned-original "
                                 "direction",
                           n={forget: self.sweep.n_forget, "retain": self.sweep.n_retain})

    @classmethod
    def plot_models(cls, results: dict[str, Result]):
        """Validation forget accuracy after ablating each layer's direction, one line per protected
        model."""
        return layer_lines({m: r.sweep.forget for m, r in results.items()},
                           title="Forget accuracy after ablating one layer's direction",
                           n={m: r.sweep.n_forget for m, r in results.items()})


def cost(cfg: Config, sizes) -> dict[str, int]:
    """Steps of `run` (`interp.cost`): the filter on both models, the sweep, five final scores
    (the placebo's among them), each on forget, retain and control."""
    f, r = capped(sizes.forget_test, cfg.eval_limit), capped(sizes.retain_test, cfg.eval_limit)
    small = capped(sizes.forget_val, cfg.sweep_limit) + capped(sizes.retain_val, cfg.sweep_limit)
    extra = len(cfg.variants) - 1  # each: its own sweep and best-layer test scores
    c = capped(sizes.control_test, cfg.eval_limit)
    return {"score": 2 * sizes.forget_train + (2 + sizes.n_layers) * small + 5 * (f + r + c)
            + extra * (sizes.n_layers * small + f + r + c),
            "directions": 2 * sizes.forget_train}

def run(model: HookedTransformer, data, cfg: Config | None = None, *,
        original: HookedTransformer | None = None, out: Path | None = None,
        progress: bool = True) -> Result:
    """Unlearned - original directions per block, on training forget questions the original
    answers right and the unlearned wrong; ablate each layer's own direction (the sweep, on at
    most `sweep_limit` validation questions per split, which picks the best layer), every
    layer's at once, and the best one everywhere as a weight edit, scored on the test split."""
    cfg = cfg or Config()
    if (done := base.finished(Result, out)) is not None:
        return done
    if original is None:
        raise InterpError("the directions attack needs the original model (before unlearning)")
    data = as_data(data)
    t0 = time.perf_counter()
    train = data.questions("forget_train")
    test = QuestionSets.load(data, "test", limit=cfg.eval_limit)
    forget = test.forget

    def score(questions, hooks=None, model=model):
        return evaluate(model, questions, hooks=hooks, progress=False,
                        batch_size=cfg.batch_size).accuracy

    def measured(hooks=None, model=model, cls=Measured):
        return test.score(lambda qs: evaluate(model, qs, hooks=hooks, progress=False,
                                              batch_size=cfg.batch_size), cls)

    orig_ok = evaluate(original, train, progress=False, batch_size=cfg.batch_size).correct
    unl_ok = evaluate(model, train, progress=False, batch_size=cfg.batch_size).correct
    chosen = [q for q, a, b in zip(train, orig_ok.tolist(), unl_ok.tolist()) if a and not b]
    if len(chosen) < 4:
        chosen = train  # the protection hid too little to filter on; use every question
    tables, outliers = compute_variants(model, original, chosen, data, cfg)
    dirs = tables[cfg.variants[0]]
    # the layer is chosen on the validation split; every reported score is on the test split
    f_small = data.questions("forget_val", limit=cfg.sweep_limit)
    r_small = data.questions("retain_val", limit=cfg.sweep_limit)
    base_f, base_r = score(f_small), score(r_small)
    n_val = (len(f_small), len(r_small))

    def sweep_of(d: LayerDirections, desc: str) -> tuple[Sweep, int]:
        from interp.attacks.ablation_sweep import ablation_sweep

        s = ablation_sweep(model, d, f_small, r_small, batch_size=cfg.batch_size,
                           baseline=(base_f, base_r), progress=progress, desc=desc)
        return Sweep(s.forget, s.retain, s.n_forget, s.n_retain), s.best_layer

    sweep, best = sweep_of(dirs, "ablation sweep")
    best_hooks, all_hooks = ablation_hooks(model, dirs, [best]), ablation_hooks(model, dirs)
    placebo_hooks = ablation_hooks(model, random_directions(dirs, cfg.placebo_seed), [best])
    edited = copy_model(model)
    orthogonalize_weights(edited, dirs.directions[best])
    val = {"ablate-best-layer": Measured(sweep.forget[best], sweep.retain[best], *n_val),
           "orthogonalize": Measured(score(f_small, model=edited), score(r_small, model=edited),
                                     *n_val)}
    others = {}
    for name in cfg.variants[1:]:
        v_sweep, v_best = sweep_of(tables[name], f"ablation sweep ({name})")
        hooks = ablation_hooks(model, tables[name], [v_best])
        others[name] = VariantResult(
            v_sweep, v_best, Measured(v_sweep.forget[v_best], v_sweep.retain[v_best], *n_val),
            measured(hooks), tables[name].diff_norms.tolist())
    result = Result(
        config=cfg, n_direction_prompts=len(chosen), diff_norms=dirs.diff_norms.tolist(),
        sweep=sweep, best_layer=best, val=val,
        no_attack=measured(cls=Baseline), ablate_best_layer=measured(best_hooks),
        ablate_all_layers=measured(all_hooks),
        orthogonalize_best_everywhere=measured(model=edited), placebo=measured(placebo_hooks),
        recipe=cfg.recipe, variant=cfg.variants[0], variants=others, outliers=outliers,
        format=forget[0].format, seconds=round(time.perf_counter() - t0, 1), dirs=dirs)
    if out is not None:
        save_directions(dirs, Path(out) / DIRECTIONS_FILE)
    return base.save(result, out)


def random_directions(dirs: LayerDirections, seed: int) -> LayerDirections:
    """The placebo: one random unit direction per layer (seeded, Gaussian), at the same hook and
    where `dirs` has a direction."""
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(dirs.directions.shape, generator=g, dtype=torch.float64)
    rand = rand / rand.norm(dim=-1, keepdim=True)
    return LayerDirections(rand.to(dirs.directions.dtype), dirs.diff_norms, dirs.means_a,
                           dirs.means_b, dirs.hook, "placebo")


def compute_variants(model: HookedTransformer, original: HookedTransformer,
                     chosen: list[Question], data, cfg: Config
                     ) -> tuple[dict[str, LayerDirections], list[str]]:
    """Each asked variant's directions (`interp.attacks.direction_recipes`) and, for the official
    recipe, the outlier token strings removed."""
    want = set(cfg.variants)
    hook = cfg.directions.hook
    retain = data.questions("retain_train") if data.has("retain_train") else []
    unrelated = data.corpus("unrelated")[: len(chosen)] if data.has("unrelated") else []
    for name, have in (("retain", retain), ("unrelated", unrelated)):
        if name in want and not have:
            raise InterpError(f"the {name!r} direction variant needs {name} data in the folder")
    out: dict[str, LayerDirections] = {}
    if cfg.recipe == "official":
        if hook != "resid_post":
            raise InterpError("the official recipe reads the block outputs (hook resid_post)")
        m = official_means(model, original, chosen, retain, unrelated, cfg.official,
                           "pca" in want)
        mean_unl = m["unlearned"]
        out["models"] = _finish(mean_unl, m["original"], hook, "models")
        if "retain" in want:
            out["retain"] = _finish(mean_unl, m["retain"], hook, "retain")
        if "unrelated" in want:
            out["unrelated"] = _finish(mean_unl, m["unrelated"], hook, "unrelated")
        if "pca" in want:
            top = paired_pca(m["pca_original"], m["pca_unlearned"], out["models"].directions)
            out["pca"] = LayerDirections(top.float(), torch.ones(top.shape[0]), m["original"],
                                    mean_unl, hook, "pca")
        return {v: out[v] for v in cfg.variants}, m["outliers"]
    dcfg = cfg.directions
    out["models"] = diff_in_means_models(model, original, chosen, dcfg)
    if "retain" in want:
        out["retain"] = diff_in_means_prompts(model, chosen, retain, dcfg)
    if "unrelated" in want:
        out["unrelated"] = diff_in_means_prompts(model, chosen, unrelated, dcfg)
    if "pca" in want:
        limit = cfg.official.pca_limit
        ids = prompt_ids(model, chosen)
        acts = [first_acts(m, ids, dcfg, limit) for m in (original, model)]
        top = paired_pca(acts[0], acts[1], out["models"].directions)
        out["pca"] = LayerDirections(top.float(), torch.ones(top.shape[0]), out["models"].means_b,
                                out["models"].means_a, hook, "pca")
    return {v: out[v] for v in cfg.variants}, []


def first_acts(model, ids, dcfg: DirectionsConfig, limit: int) -> Tensor:
    """The first `limit` counted tokens' activations at every layer (n_layers, t, d), CPU."""
    from interp.attacks.direction_recipes import first_tokens

    return first_tokens(token_activations(model, ids, dcfg.skip_first, dcfg.hook,
                                          dcfg.batch_size), limit)[0]


DIRECTIONS_FILE = "directions.safetensors"
DIRECTIONS_KEY = "directions"  # the unit directions (layer, d_model) in DIRECTIONS_FILE


def save_directions(dirs: LayerDirections, path: Path) -> None:
    """Write the unit directions (n_layers, d_model) and their difference norms (n_layers,) to a
    safetensors file."""
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({DIRECTIONS_KEY: dirs.directions.contiguous(),
               "diff_norms": dirs.diff_norms.contiguous()}, str(path))

def _mean_prompt(pr, cfg: Config) -> float:
    """`interp plan`'s probe: seconds per prompt through the difference-in-means pass."""
    prompts = pr.data.questions("forget_train")[: cfg.directions.batch_size]
    return timing.timed_calls(lambda: (robust_mean(pr.model, prompts, cfg.directions),
                                       len(prompts))[1], pr.steps, pr.device)


def probes(cfg: Config) -> dict[str, StepProbe]:
    """How `interp plan` times the kinds `cost` counts (`interp.cost`)."""
    return {"directions": StepProbe("prompt (per model)", _mean_prompt,
                                    knob="a smaller directions batch_size")}


SPEC = AttackSpec(
    "directions", order=20, needs_original=True,
    summary="difference-in-means directions: ablation sweep and weight orthogonalization",
    presets={
        "smoke": Config(DirectionsConfig(), sweep_limit=100),
        "laptop": Config(DirectionsConfig(), sweep_limit=40, eval_limit=200),
        # the official recipe and its four variants
        "paper": Config(DirectionsConfig(skip_first=40), sweep_limit=200, recipe="official",
                        variants=("models", "retain", "unrelated", "pca")),
    },
    budgets={"quick": Config(DirectionsConfig(), sweep_limit=50),
             "full": Config(DirectionsConfig(), sweep_limit=40, eval_limit=200)},
    compared=lambda cfg: True)
