"""`interp plan`: what a preset will cost on the hardware at hand, before any download.

A model of the preset's shape is built with random weights on the device (`interp.model.shapes`);
each stage's real code runs a few steps on inputs of the preset's lengths (synthetic questions and
texts, laid out by `prepare_data`): scoring, the RMU / NPO / DPO training step, a LoRA step, a GCG
step, a SNIP batch, the directions pass and the logit lens. Seconds per step are the median over
the steps after the first (the warm-up); peak memory is the device allocator's peak on a GPU and
the process's resident set on a CPU. Each module's `cost(cfg, sizes)` counts how many steps of
each stage the preset runs (`interp.cost`); the projection is steps x seconds per step, per stage.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp import timing
from interp.cost import Sizes, StepProbe, add, measure_cost
from interp.data.prepare import split_counts
from interp.errors import InterpError
from interp.pipelines.presets import Preset, get_preset
from interp.pipelines.probes import (
    Probe,
    device_memory_mb,
    is_oom,
    peak_memory,
    score_probe,
    synthetic_data,
)

# WMDP-bio (test) and MMLU (test): the paper preset's forget and retain questions
PAPER_QUESTIONS = {"forget": 1273, "retain": 14042}
SCORE = "score"  # the one kind every preset has: a question scored


@dataclass
class PlanConfig:
    """What `interp plan` measures: the preset, the model shape, device and dtype (None: the
    preset's), steps per stage, the prompt length in tokens, forget and retain question counts
    (None: WMDP-bio's and MMLU's), the memory to plan for in MB (None: the device's) and the
    seed."""

    preset: str = "paper"
    shape: str = "zephyr"  # a named shape, a config.json, or a folder with one
    device: str | None = None
    dtype: str | None = None  # None: the preset's
    probe_steps: int = 3  # steps run per stage; the first is warm-up
    prompt_tokens: int = 160  # length of a scored question's prompt (assumed for WMDP-bio)
    forget: int | None = None  # forget questions (None: WMDP-bio's 1,273 for the paper preset)
    retain: int | None = None  # retain questions (None: MMLU's 14,042 for the paper preset)
    memory_mb: float | None = None  # the memory to plan for (None: the device's)
    seed: int = 0


@dataclass
class Stage:
    """One stage's line of the plan: seconds per step (its `unit`), how many steps the preset runs
    (`counted`: by module), the projected seconds, the peak memory in MB, and whether it fits."""

    stage: str
    unit: str
    seconds_per_step: float | None
    steps: int
    projected_seconds: float | None
    peak_memory_mb: float | None
    fits: bool
    counted: dict[str, int] = field(default_factory=dict)  # where the steps come from
    note: str = ""


@dataclass
class Plan:
    """What a preset will cost: the model's shape, device, dtype and parameter count, the memory
    planned for (MB), the question and text counts, a line per stage and the projected total in
    seconds."""

    preset: str
    shape: str
    device: str
    dtype: str
    n_params: int
    memory_mb: float
    sizes: Sizes
    stages: list[Stage]
    projected_total_seconds: float
    all_fit: bool
    probe_steps: int
    threads: int
    note: str = ""  # what the projection leaves out (a preset's other forget sources)

    def to_json(self) -> dict:
        """The plan as a JSON object (stages and sizes included)."""
        return asdict(self)


# ------------------------------------------------------------------------------- step kinds
@dataclass
class Kinds:
    """The step kinds a preset runs, each with the probe that times it (None: nothing can), and
    the modules whose steps cannot be counted (no `cost`)."""

    probes: dict[str, StepProbe | None]
    uncounted: list[str]
    configs: dict[str, object] = field(default_factory=dict)  # kind -> the config it times


def _trained_step(module) -> StepProbe | None:
    """A protection's training step, timed by its own `train` with `steps` set."""
    if "steps" not in {f.name for f in fields(module.Config)}:
        return None

    def measure(pr: Probe, cfg) -> float:
        with timing.step_times() as times:
            module.train(pr.model, pr.data, replace(cfg, steps=pr.steps), run_dir=None,
                         progress=False)
        return timing.median_after_warmup(times)
    return StepProbe("training step", measure)


def step_kinds(p: Preset) -> Kinds:
    """Every kind of step the preset's protections and attacks count, from the registry."""
    from interp.registry import attacks, protections

    kinds: dict[str, StepProbe | None] = {SCORE: score_probe()}
    uncounted, configs = [], {}
    for table, modules in ((p.protections, protections()), (p.attacks, attacks())):
        for name, module in modules.items():
            if name not in table:
                continue
            if not hasattr(module, "cost"):
                uncounted.append(name)
            if hasattr(module, "probes"):
                own = module.probes(table[name])
            elif table is p.protections:
                own = {name: _trained_step(module)}
            else:
                own = {}
            kinds.update(own)
            configs.update({k: table[name] for k in own})
    return Kinds(kinds, uncounted, configs)


# ---------------------------------------------------------------------------------- counting
def count_steps(p: Preset, sizes: Sizes) -> dict[str, dict[str, int]]:
    """Steps per kind, each split by where it comes from ("npo: protect", "gcg on rmu"); a
    module without `cost` counts nothing (`step_kinds(p).uncounted` names it)."""
    from interp.pipelines.reproduce import attack_models  # the models reproduce runs it on
    from interp.registry import attacks, protections

    stages: dict[str, dict[str, int]] = {s: {} for s in step_kinds(p).probes}

    def put(label: str, counts: dict[str, int]) -> None:
        for stage, n in counts.items():
            if n:
                stages.setdefault(stage, {})
                stages[stage][label] = stages[stage].get(label, 0) + n

    trained = protections()
    for method in p.methods:
        counts = add({}, measure_cost(sizes))
        counts = add(counts, measure_cost(sizes))  # before and after
        if method not in p.external and hasattr(trained[method], "cost"):
            counts = add(counts, trained[method].cost(p.protections[method], sizes))
        put(f"{method}: protect", counts)
    for name, module in attacks().items():
        if name not in p.attacks or not hasattr(module, "cost"):
            continue
        for model in attack_models(p, name):
            put(f"{name} on {model}", module.cost(p.attacks[name], sizes))
    return stages


def project(seconds_per_step: float | None, steps: int) -> float | None:
    """Projected seconds for `steps` steps; None when the stage was not timed."""
    return None if seconds_per_step is None else seconds_per_step * steps


def preset_sizes(p: Preset, cfg: PlanConfig, n_layers: int) -> Sizes:
    """The question and text counts the preset would run on, with the entity splits applied
    (questions from sources capped at `source_limit`)."""
    n_forget = cfg.forget or PAPER_QUESTIONS["forget"]
    n_retain = cfg.retain or PAPER_QUESTIONS["retain"]
    if p.source_limit:
        n_forget, n_retain = min(n_forget, p.source_limit), min(n_retain, p.source_limit)
    c = split_counts(n_forget, n_retain)
    from interp.data.unrelated import load_unrelated

    return Sizes(c["forget_train"], c["forget_test"], c["retain_train"], c["retain_test"],
                 unrelated=len(load_unrelated()), forget_val=c["forget_val"],
                 retain_val=c["retain_val"], n_layers=n_layers, letter=p.sources is not None)


def advice(stage: str, knob: str, peak_mb: float | None, limit_mb: float) -> str:
    """The advice for a stage that does not fit in `limit_mb` MB: the knob to lower, or more
    GPUs."""
    need = f"needs {peak_mb:,.0f} MB" if peak_mb else "ran out of memory"
    return (f"{stage}: {need} of {limit_mb:,.0f} MB; use {knob}, or spread the model over GPUs "
            "with --n-devices 2")


def _fit_layers(cfg, last: int):
    """`cfg` with every layer index past `last` moved to it (fields named `layer`, `*_layer`,
    `*layers`; nested configs too), for a shape with fewer layers than the preset's."""
    if not is_dataclass(cfg):
        return cfg
    changes = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            changes[f.name] = _fit_layers(value, last)
        elif (f.name == "layer" or f.name.endswith("_layer")) and isinstance(value, int):
            changes[f.name] = min(value, last)
        elif f.name.endswith("layers") and isinstance(value, tuple) and \
                all(isinstance(i, int) for i in value):
            changes[f.name] = tuple(min(i, last) for i in value)
    return replace(cfg, **changes) if changes else cfg


def _fit_to_shape(p: Preset, n_layers: int) -> Preset:
    """Layer indices of the preset that the shape does not have are moved to its last layer."""
    last = n_layers - 1
    return replace(p, protections={k: _fit_layers(v, last) for k, v in p.protections.items()},
                   attacks={k: _fit_layers(v, last) for k, v in p.attacks.items()})


def plan(cfg: PlanConfig, out: Path | None = None, progress: bool = True,
         preset: Preset | None = None) -> Plan:
    """Measure each stage on a random-weight model of `cfg.shape` and project the preset
    (`preset` overrides the named one, e.g. with a smaller budget); with `out`, write plan.json."""
    from interp.model.load import resolve_device, resolve_dtype
    from interp.model.shapes import parameter_count, shape_config

    if cfg.probe_steps < 2:
        raise InterpError(f"--probe-steps must be at least 2 (one warm-up), got "
                          f"{cfg.probe_steps}")
    p = preset or get_preset(cfg.preset)
    config = shape_config(cfg.shape)
    device = resolve_device(cfg.device)
    dtype_name = cfg.dtype or p.dtype or "float32"
    dtype = resolve_dtype(dtype_name)
    limit = cfg.memory_mb or device_memory_mb(device)
    n_params = parameter_count(config)
    n_layers = int(config["num_hidden_layers"])
    p = _fit_to_shape(p, n_layers)
    if p.sources is None and (cfg.forget is None or cfg.retain is None):
        raise InterpError(f"preset {p.name!r} builds its own benchmark; give --forget and "
                          "--retain (its question counts, from the data folder's manifest)")
    sizes = preset_sizes(p, cfg, n_layers)
    kinds = step_kinds(p)
    counts = count_steps(p, sizes)
    weights_mb = n_params * torch.finfo(dtype).bits / 8 / 2**20
    seconds: dict[str, float | None] = {}
    peaks: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    if weights_mb > limit:
        line = (f"the weights alone need {weights_mb:,.0f} MB of {limit:,.0f} MB; use a smaller "
                "dtype or --n-devices")
        seconds = {s: None for s in kinds.probes}
        peaks = {s: None for s in kinds.probes}
        notes = {s: line for s in kinds.probes}
    else:
        _measure_all(p, cfg, kinds, device, dtype_name, limit, seconds, peaks, notes, progress)
    stages = []
    for s, probe in kinds.probes.items():
        steps = sum(counts.get(s, {}).values())
        peak = peaks.get(s)
        fits = s in seconds and seconds[s] is not None and (peak is None or peak <= limit)
        note = notes.get(s, "" if s in seconds or steps else "not run by this preset")
        if probe is None:
            note = f"{s}: no probe times this step (its module has no probes(cfg)); not projected"
        elif s in seconds and seconds[s] is not None and not fits:
            note = advice(s, probe.knob, peak, limit)
        stages.append(Stage(s, probe.unit if probe else "step", _round(seconds.get(s)), steps,
                            _round(project(seconds.get(s), steps)) if fits else None,
                            _round(peak), fits, counts.get(s, {}), note))
    for name in kinds.uncounted:
        stages.append(Stage(name, "-", None, 0, None, None, False, {},
                            f"{name}: not counted (its module has no cost(cfg, sizes)); its "
                            "time is not in the projection"))
    total = sum(st.projected_seconds or 0.0 for st in stages)
    used = [st for st in stages if st.steps or st.stage in kinds.uncounted]
    result = Plan(preset=p.name, shape=str(cfg.shape), device=str(device), dtype=dtype_name,
                  n_params=n_params, memory_mb=round(limit, 1), sizes=sizes, stages=stages,
                  projected_total_seconds=round(total, 1),
                  all_fit=all(st.fits for st in used), probe_steps=cfg.probe_steps,
                  threads=torch.get_num_threads(),
                  note=(f"counted for the first forget source ({p.domains[0].name}, "
                        f"{sizes.forget_train + sizes.forget_val + sizes.forget_test} questions); "
                        f"the preset runs {len(p.domains)} ({', '.join(d.name for d in p.domains)})"
                        ", each on its own questions: about that many times this"
                        if p.domains else ""))
    if out is not None:
        from interp.store import write_json

        write_json(Path(out), result.to_json())
    return result


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.4g}")


def _measure_all(p: Preset, cfg: PlanConfig, kinds: Kinds, device, dtype_name: str,
                 limit_mb: float, seconds, peaks, notes, progress: bool) -> None:
    import tempfile

    from interp.model.shapes import random_model

    model = random_model(cfg.shape, device=device, dtype=dtype_name, seed=cfg.seed)
    long_tokens = max([getattr(c, "max_len", 0) for c in (*p.protections.values(),
                                                          *p.attacks.values())] + [64])
    wanted = [s for s, probe in kinds.probes.items() if probe is not None]
    with tempfile.TemporaryDirectory(prefix="interp-plan-") as tmp:
        data = synthetic_data(model, Path(tmp) / "data", cfg.prompt_tokens, long_tokens,
                              seed=cfg.seed)
        probe = Probe(model, data, p, cfg.probe_steps, device, Path(tmp))
        bar = tqdm(wanted, desc="plan", disable=not progress, leave=False)
        for stage in bar:
            bar.set_postfix(stage=stage)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            try:
                with peak_memory(device) as peak:
                    seconds[stage] = kinds.probes[stage].measure(probe, kinds.configs.get(stage))
            except Exception as exc:  # a stage that does not fit is a result, not a crash
                if not is_oom(exc):
                    raise
                probe.drop_original()
                seconds[stage] = None
                notes[stage] = advice(stage, kinds.probes[stage].knob, None, limit_mb)
            peaks[stage] = peak["mb"]
    del model, probe


def summary_lines(result: Plan) -> list[str]:
    """The plan as a table for the terminal."""
    n = result.n_params
    size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
    lines = [f"{result.preset} preset, shape {result.shape} ({size} "
             f"weights), {result.device}, {result.dtype}, {result.threads} threads",
             f"{'stage':<11}{'s/step':>10}{'steps':>10}{'projected':>12}{'peak MB':>10}  fits"]
    for st in result.stages:
        lines.append(f"{st.stage:<11}{_fmt(st.seconds_per_step):>10}{st.steps:>10,}"
                     f"{_hours(st.projected_seconds):>12}{_fmt(st.peak_memory_mb, 0):>10}  "
                     f"{'yes' if st.fits else 'NO'}")
        if st.note:
            lines.append(f"  {st.note}")
    if result.note:
        lines.append(result.note)
    lines.append(f"projected total: {_hours(result.projected_total_seconds)}"
                 + ("" if result.all_fit else " (stages that do not fit are not counted)"))
    return lines


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if digits == 0 else f"{x:.{digits}g}"


def _hours(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s:.0f} s"
