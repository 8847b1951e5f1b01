"""`interp plan --card GB`: each stage's peak memory on a card of that size, with no GPU and
without allocating the weights.

The model of the preset's shape is built on the meta device (shapes only, no memory), and each
stage's step runs on it at the preset's batch and lengths under `LiveBytes`, which counts every
tensor an operation creates and frees: weights, activations kept for the backward pass, gradients,
float32 master weights and AdamW's moments, SNIP's float32 sums. A test checks that count at a tiny
shape against the same step run for real on the CPU. A stage fits when peak x 1.10 + 1 GiB (the
allocator's slack and CUDA's context) is within the card; one that does not gets the one line
that would make it fit (a smaller batch, measured, or for full-parameter training: LoRA, a block
subset, or more devices, with their sizes).

What each stage's step is (the `Workload`s, from the preset's configs) is an approximation of its
largest step, stated per line: NPO and DPO hold a forget and a retain (or chosen and rejected)
batch in one graph; GCG's gradient step and its candidate scoring are separate lines; attacks that
read the original model hold two models.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from interp.cost import Workload, lora_param_count
from interp.errors import InterpError
from interp.model.memory import LiveBytes
from interp.pipelines.presets import Preset, domain_presets, get_preset, train_protections

GiB = 2**30
SLACK, CONTEXT_GIB = 1.10, 1.0  # allocator slack and CUDA context, added to every peak


@dataclass
class MemoryLine:
    """A stage's projected peak (GiB, slack not included), whether it fits, and what would."""

    stage: str
    peak_gib: float
    fits: bool
    advice: str
    workload: Workload


@dataclass
class MemoryPlan:
    """Every stage of a preset against one card."""

    preset: str
    shape: str
    dtype: str
    attention: str
    card_gib: float
    weights_gib: float
    bytes_per_trained_param: int  # training: weight, float32 master and gradient, AdamW's moments
    lines: list[MemoryLine] = field(default_factory=list)

    @property
    def all_fit(self) -> bool:
        """Whether every stage fits the card."""
        return all(line.fits for line in self.lines)

    def to_json(self) -> dict:
        """The plan as JSON (`all_fit` included)."""
        return {**asdict(self), "all_fit": self.all_fit}


# ------------------------------------------------------------------------------- workloads
def workloads(p: Preset, config: dict, prompt_tokens: int = 160) -> list[Workload]:
    """The steps whose peak a preset's stages reach: each trained protection's and each attack's
    own `memory_steps(cfg, config, prompt_tokens)` (`interp.cost`), else a forward of its batch."""
    from interp.attacks.base import registry
    from interp.registry import protections

    out = [Workload("score", 32, prompt_tokens, note="32 questions of the prompt length")]
    trained = protections()
    for method in p.methods:
        if method in p.external or method not in p.protections:
            continue
        module, c = trained[method], p.protections[method]
        if hasattr(module, "memory_steps"):
            out += module.memory_steps(c, config, prompt_tokens)
        else:
            out.append(Workload(f"{method} step", getattr(c, "batch_size", 1),
                                getattr(c, "max_len", prompt_tokens), "weights", "all"))
    for name, module in registry().items():
        if name not in p.attacks:
            continue
        cfg = p.attacks[name]
        models = 2 if module.SPEC.wants_original(cfg) else 1
        steps = (module.memory_steps(cfg, config, prompt_tokens)
                 if hasattr(module, "memory_steps")
                 else [Workload(name, getattr(cfg, "batch_size", 16), prompt_tokens)])
        out += [replace(w, models=max(w.models, models)) for w in steps]
    return out


# ------------------------------------------------------------------------------- measuring
def meta_model(shape, dtype: str = "bfloat16", attention: str = "sdpa", device: str = "meta"):
    """A HookedTransformer of `shape` on the meta device (no weights allocated); `device="cpu"`
    builds the same model for real (the tests' reference)."""
    from transformer_lens import HookedTransformer

    from interp.model.attention import use_sdpa
    from interp.model.load import hooked_config, resolve_dtype
    from interp.model.shapes import shape_config

    cfg = hooked_config(shape_config(shape), device=torch.device(device),
                        dtype=resolve_dtype(dtype))
    cfg.init_weights = device != "meta"
    with torch.device(device):
        model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    use_sdpa(model, enabled=attention == "sdpa")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@contextmanager
def fused_attention_on_meta() -> Iterator[None]:
    """On the meta device, causal SDPA without a mask as a GPU runs it: the fused (flash)
    kernel, which keeps the output and its log-sum-exp for the backward pass, not the scores
    (meta's default SDPA is the math path, which materializes them)."""
    real = F.scaled_dot_product_attention

    def fused(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if q.device.type == "meta" and attn_mask is None and not kwargs:
            return torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, v, dropout_p, is_causal, False, scale=scale)[0]
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                    scale=scale, **kwargs)

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = real


def _block_params(model) -> list[torch.nn.Parameter]:
    from interp.model.hooks import block_weight_names

    params = dict(model.named_parameters())
    return [params[n] for n in block_weight_names(model)]


def step_peak(model, w: Workload) -> int:
    """Peak live bytes of one step of `w` on `model` (meta or real), weights included."""
    from interp.training import bytes_per_trained_param

    device = model.cfg.device
    live = LiveBytes().track_module(model)
    extra = step_temp = 0
    handles, states = [], []
    named = dict(model.named_parameters())
    trained = ([named[n] for n in w.params] if w.params else _block_params(model)) \
        if w.grad == "weights" else []
    flags = [p.requires_grad for p in trained]
    try:
        for p in trained:
            p.requires_grad_(True)
        if w.trained == "all":
            from interp.training import _Masters

            masters = _Masters(trained)
            handles += masters.handles
            for m in masters.masters:  # AdamW's two moments, alive from the first step on
                states += [torch.zeros_like(m, dtype=torch.float32),
                           torch.zeros_like(m, dtype=torch.float32)]
            live.track(*[m for m, h in zip(masters.masters, masters.half) if h], *states)
            # AdamW's step on a GPU (foreach) makes sqrt(v) for every tensor while the float32
            # gradients are alive: 4 more bytes per trained weight, after the backward pass
            step_temp = 4 * sum(m.numel() for m in masters.masters)
        else:
            sums = [torch.zeros_like(p, dtype=torch.float32) for p in trained] if w.snip else []
            live.track(*sums)
            for i, p in enumerate(trained):
                def free(t, i=i):  # as `snip_scores`: |grad| added in place, then freed
                    grad, t.grad = t.grad, None
                    if sums:
                        sums[i].add_(grad.abs_())
                handles.append(p.register_post_accumulate_grad_hook(free))
        if w.trained == "lora":
            extra += w.lora_params * bytes_per_trained_param(model.cfg.dtype)
        extra += (w.models - 1) * sum(p.numel() * p.element_size() for p in model.parameters())
        tokens = torch.zeros((w.batch, w.tokens), dtype=torch.long, device=device)
        grad_ctx = torch.no_grad() if w.grad == "none" else nullcontext()
        with fused_attention_on_meta(), live, grad_ctx:
            if w.grad == "inputs":
                resid = torch.zeros((w.batch, w.tokens, model.cfg.d_model), device=device,
                                    dtype=model.cfg.dtype, requires_grad=True)
                logits = model(resid, start_at_layer=0)
            elif w.stop_at is not None:  # a residual read at a layer: no logits
                logits = model(tokens, stop_at_layer=w.stop_at)
            else:
                logits = model(tokens)
            if w.grad != "none" and w.stop_at is not None:
                loss = logits.float().square().mean()
                del logits
                loss.backward()
                del loss
            elif w.grad != "none":
                loss = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
                del logits
                loss.backward()
                del loss
            else:
                del logits
            after_backward = live.current
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(trained, flags):
            p.grad = None
            p.requires_grad_(flag)
    return max(live.peak, after_backward + step_temp) + extra


def _fits(peak_bytes: float, card_gib: float) -> bool:
    return peak_bytes / GiB * SLACK + CONTEXT_GIB <= card_gib


def _advice(model, w: Workload, peak: int, card_gib: float, config: dict) -> str:
    """The one line that would make `w` fit."""
    need = f"{w.stage}: {peak / GiB:,.1f} GiB (+ slack) of {card_gib:g}"
    if w.trained == "all":
        usable = (card_gib - CONTEXT_GIB) / SLACK * GiB
        small = replace(w, batch=min(w.batch, 2))  # one forget and one retain sequence
        full_small = step_peak(model, small)
        named = dict(model.named_parameters())
        n_trained = sum(p.numel() for p in ([named[n] for n in w.params] if w.params
                                            else _block_params(model)))
        # beside each trained weight: its float32 master (half precision), float32 gradient,
        # two moments and AdamW's sqrt(v) at the step
        beside = (4 if model.cfg.dtype in (torch.bfloat16, torch.float16) else 0) + 16
        subset = max(0, int((usable - (full_small - n_trained * beside)) // beside))
        lora, batch = replace(w, trained="lora", lora_params=lora_param_count(config, 128)), w.batch
        while True:
            lora_peak = step_peak(model, replace(lora, batch=batch))
            if _fits(lora_peak, card_gib) or batch == 1:
                break
            batch //= 2
        lora_line = (f"LoRA rank 128 fits at batch {batch} ({lora_peak / GiB:,.1f} GiB; raise "
                     "grad_accum to keep the effective batch)" if _fits(lora_peak, card_gib)
                     else f"LoRA rank 128 needs {lora_peak / GiB:,.1f} GiB even at batch 1")
        devices = math.ceil(peak / GiB * SLACK / (card_gib - CONTEXT_GIB))
        return (f"{need}: full-parameter training needs {full_small / GiB:,.1f} GiB even at "
                f"batch {small.batch} ({beside} bytes per trained weight beside it); "
                f"{lora_line}; a block subset of at most {subset / 1e9:.2f}B trained weights "
                f"fits at batch {small.batch}; or spread over {devices} cards "
                f"(--n-devices {devices})")
    batch = w.batch
    while batch > 1:
        batch //= 2
        smaller = step_peak(model, replace(w, batch=batch))
        if _fits(smaller, card_gib):
            return f"{need}: batch {batch} fits ({smaller / GiB:,.1f} GiB)"
    devices = math.ceil(peak / GiB * SLACK / (card_gib - CONTEXT_GIB))
    return f"{need}: even batch 1 does not fit; spread over {devices} cards (--n-devices)"


def memory_plan(preset: str | Preset = "paper", shape: str = "zephyr", card_gib: float = 80.0,
                *, dtype: str | None = None, attention: str = "sdpa", prompt_tokens: int = 160,
                train: str | None = None, progress: bool = True) -> MemoryPlan:
    """Each stage's peak on a `card_gib` card, measured on the meta device (see the module
    docstring); `train`: plan `--train-protections` (all, or e.g. npo,dpo)."""
    from tqdm.auto import tqdm

    from interp.model.shapes import shape_config

    if card_gib <= 0:
        raise InterpError(f"--card must be a positive number of GiB, got {card_gib}")
    if attention not in ("sdpa", "eager"):
        raise InterpError(f"--attention must be sdpa or eager, got {attention!r}")
    p = get_preset(preset) if isinstance(preset, str) else preset
    if train:
        p = train_protections(p, train)
    p = domain_presets(p)[0]  # every domain runs the same steps on the same model
    dtype = dtype or p.dtype or "float32"
    model = meta_model(shape, dtype, attention)
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    from interp.model.load import resolve_dtype
    from interp.training import bytes_per_trained_param

    result = MemoryPlan(preset=p.name, shape=str(shape), dtype=dtype, attention=attention,
                        card_gib=card_gib, weights_gib=round(weights / GiB, 2),
                        bytes_per_trained_param=bytes_per_trained_param(resolve_dtype(dtype)))
    from interp.pipelines.plan import _fit_to_shape

    config = shape_config(shape)
    p = _fit_to_shape(p, int(config["num_hidden_layers"]))
    for w in tqdm(workloads(p, config, prompt_tokens), desc="memory plan",
                  disable=not progress, leave=False):
        peak = step_peak(model, w)
        fits = _fits(peak, card_gib)
        result.lines.append(MemoryLine(w.stage, round(peak / GiB, 2), fits,
                                       "" if fits else _advice(model, w, peak, card_gib, config),
                                       w))
    return result


def memory_lines(plan: MemoryPlan) -> list[str]:
    """The plan as a table for the terminal."""
    lines = [f"{plan.preset} preset, shape {plan.shape}, {plan.dtype}, {plan.attention} attention:"
             f" weights {plan.weights_gib:,.1f} GiB; a {plan.card_gib:g} GiB card "
             f"(peak x {SLACK:.2f} + {CONTEXT_GIB:g} GiB must fit); training keeps "
             f"{plan.bytes_per_trained_param} bytes per trained weight",
             f"{'stage':<17}{'batch':>6}{'tokens':>8}{'peak GiB':>10}  fits  step"]
    for line in plan.lines:
        w = line.workload
        lines.append(f"{line.stage:<17}{w.batch:>6}{w.tokens:>8}{line.peak_gib:>10,.1f}  "
                     f"{'yes ' if line.fits else 'NO  '}  {w.note}")
        if line.advice:
            lines.append(f"  {line.advice}")
    lines.append("every stage fits" if plan.all_fit else "some stages do not fit (see above)")
    return lines
