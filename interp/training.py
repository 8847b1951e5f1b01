"""The one training loop: the smoke model, RMU, NPO, DPO and LoRA finetuning all use it.

`train(params, loss_fn, batch_at, cfg, run_dir=...)` runs AdamW with warmup and a cosine or linear
schedule, gradient accumulation and clipping, over batches chosen by a pure function of the step
(so a resumed run sees exactly the batches an uninterrupted one would). With a `run_dir` it writes
a checkpoint (trainable tensors + optimizer state as safetensors, counters as JSON) every
`checkpoint_every` steps, atomically, and resumes from the last one.

Half-precision weights (bfloat16, float16) train through float32 master weights: bf16 keeps 8
significant bits, so an AdamW update below about 0.2-0.4% of a weight is rounded away, and at
NPO's and DPO's learning rates that is most updates (a 30-step NPO run on SmolLM2 moved its weights
by 0.19 of the float32 run's distance without masters). The optimizer and its two moments live on
float32 copies of the trained tensors only; each micro-batch's half-precision gradient is added
into a float32 gradient as soon as autograd finishes it (a post-accumulate-grad hook, so no second
full set of gradients is held), clipping and the step run in float32, and the model's copy is the
masters' rounding to nearest. float16 gradients are also scaled (a dynamic loss scale: halved and
the step skipped on an overflow, doubled after 200 clean steps) so small ones do not underflow.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp import timing
from interp.errors import InterpError
from interp.store import atomic_write_text


def seed_everything(seed: int) -> None:
    """One seed reaches torch, numpy and random; torch's deterministic algorithms are on.

    Without them, the embedding gradient (an `index_put_` with accumulation) is summed by racing
    threads on the CPU, so two runs with two threads trained different smoke models; with them,
    runs at the same thread count are bitwise identical and one-thread runs are unchanged."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


THREADS_ENV = "INTERP_TRAIN_THREADS"
DEFAULT_THREADS = 2


def train_threads() -> int:
    """Threads every gradient computation runs with, whatever the caller's torch setting."""
    value = os.environ.get(THREADS_ENV, str(DEFAULT_THREADS))
    try:
        n = int(value)
    except ValueError:
        raise InterpError(f"{THREADS_ENV} must be a whole number, got {value!r}") from None
    if n < 1:
        raise InterpError(f"{THREADS_ENV} must be at least 1, got {n}")
    return n


@contextmanager
def fixed_threads() -> Iterator[None]:
    """Compute gradients with `train_threads()` threads, then restore the caller's count.

    On the CPU the backward pass of attention is not bitwise the same with 1 and 2 threads (the
    query/key gradients of the smoke model differed from its second training step), so results
    would depend on OMP_NUM_THREADS; with a fixed count they do not (set INTERP_TRAIN_THREADS to
    use more cores; results are then repeatable at that count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(train_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class TrainConfig:
    """Settings of the one training loop: steps, learning rate and its schedule (warm-up fraction or
    steps, cosine / linear / constant), gradient accumulation, AdamW's weight decay and betas,
    gradient clipping (None: none), checkpoints (0: only at the end) and the seed."""

    steps: int = 100
    lr: float = 1e-4
    warmup_frac: float = 0.05
    warmup_steps: int | None = None  # set: this many warm-up steps instead of a fraction
    schedule: str = "cosine"  # cosine | linear | constant
    grad_accum: int = 1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    checkpoint_every: int = 0  # 0: only at the end (when a run_dir is given)
    seed: int = 0
    desc: str = "training"
    progress: bool = True
    # the caller's own settings that shape the batches (max_len, loss_on, ...): a checkpoint
    # written under other settings is refused, not resumed
    fingerprint: str = ""
    keep_masters: bool = False  # half precision: return the float32 masters (TrainResult.masters)

    def __post_init__(self) -> None:
        if self.grad_accum < 1:
            raise InterpError(f"grad_accum must be at least 1, got {self.grad_accum}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise InterpError(f"warmup_steps must be at least 0, got {self.warmup_steps}")
        if self.steps < 0:
            raise InterpError(f"steps must be at least 0, got {self.steps}")

    def lr_at(self, step: int) -> float:
        """The learning rate at optimizer step `step` (0-based): linear warm-up, then the
        schedule."""
        if self.warmup_steps is not None:
            warmup = min(self.warmup_steps, self.steps)
        else:
            warmup = max(1, int(self.warmup_frac * self.steps)) if self.warmup_frac > 0 else 0
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if self.schedule == "constant":
            return self.lr
        frac = (step - warmup) / max(1, self.steps - warmup)
        if self.schedule == "linear":
            return self.lr * (1 - frac)
        return self.lr * 0.5 * (1 + math.cos(math.pi * frac))


@dataclass
class TrainResult:
    """What the loop returns: the loss per optimizer step, each step's extra numbers from the loss
    function, and the step it resumed from (0: a fresh run)."""

    losses: list[float] = field(default_factory=list)  # one per optimizer step
    extras: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    # half-precision runs with `keep_masters`: the float32 master of each trained tensor, by name
    masters: dict[str, Tensor] = field(default_factory=dict)
    skipped_steps: int = 0  # float16: steps skipped because the scaled gradient overflowed
    loss_scale: tuple[float, int] | None = None  # float16: the scale and its clean-step count


HALF = (torch.bfloat16, torch.float16)


def bytes_per_trained_param(dtype: torch.dtype) -> int:
    """Memory per trained parameter during training: the weight, its gradient and AdamW's two
    moments; in half precision also the float32 master, and its float32 gradient beside the
    half-precision one autograd writes (which lives only until it is added in)."""
    if dtype in HALF:
        return 2 + 4 + 4 + 8 + 2
    return torch.finfo(dtype).bits // 8 * 4  # weight, gradient, two moments in its dtype


class _Masters:
    """float32 masters of half-precision parameters: gradients added in by post-accumulate-grad
    hooks (removed by `close`), the model's copy refreshed from the masters after each step."""

    SCALE_WINDOW = 200

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.half = [p.dtype in HALF for p in params]
        self.masters = [p.detach().float().clone() if h else p for p, h in zip(params, self.half)]
        self.dynamic = any(p.dtype == torch.float16 for p in params)  # a dynamic loss scale
        self.scale = 2.0 ** 16 if self.dynamic else 1.0
        self.clean = 0
        self.handles = []
        for p, m, h in zip(params, self.masters, self.half):
            if h:
                self.handles.append(p.register_post_accumulate_grad_hook(self._adder(m)))

    @staticmethod
    def _adder(master: Tensor):
        def add(p: Tensor) -> None:
            g = p.grad.float()
            master.grad = g if master.grad is None else master.grad.add_(g)
            p.grad = None
        return add

    @property
    def any(self) -> bool:
        return any(self.half)

    def unscale(self) -> bool:
        """Divide the gradients by the loss scale; False (and the scale halved) when they
        overflowed, so the step is skipped."""
        if not self.dynamic:
            return True
        grads = [m.grad for m in self.masters if m.grad is not None]
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if not finite:
            self.scale /= 2
            self.clean = 0
            return False
        for g in grads:
            g.div_(self.scale)
        self.clean += 1
        if self.clean % self.SCALE_WINDOW == 0:
            self.scale *= 2
        return True

    @torch.no_grad()
    def push(self) -> None:
        """The model's copy becomes the masters' rounding."""
        for p, m, h in zip(self.params, self.masters, self.half):
            if h:
                p.copy_(m)

    def zero_grad(self) -> None:
        for p, m in zip(self.params, self.masters):
            p.grad = None
            m.grad = None

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


LossFn = Callable[[Any], "Tensor | tuple[Tensor, dict[str, float]]"]


def train(
    params: Sequence[torch.nn.Parameter],
    loss_fn: LossFn,
    batch_at: Callable[[int, int], Any],
    cfg: TrainConfig,
    *,
    run_dir: Path | None = None,
    param_names: Sequence[str] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Optimize `params` on `loss_fn(batch_at(step, micro))`; see the module docstring.
    `on_step(k)` runs after the k-th optimizer step (1-based), e.g. to score a budget curve."""
    with fixed_threads():
        return _train(list(params), loss_fn, batch_at, cfg, run_dir, param_names, on_step)


def _train(params, loss_fn, batch_at, cfg: TrainConfig, run_dir, param_names, on_step
           ) -> TrainResult:
    if not params:
        raise InterpError("nothing to train: no trainable parameters were selected")
    names = list(param_names) if param_names else [f"p{i}" for i in range(len(params))]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    masters = _Masters(params)
    try:
        return _loop(params, masters, loss_fn, batch_at, cfg, run_dir, names, on_step)
    finally:  # finished or interrupted: no hooks, no gradients, the caller's flags
        masters.close()
        for p, flag in zip(params, flags):
            p.grad = None
            p.requires_grad_(flag)


def _loop(params, masters: _Masters, loss_fn, batch_at, cfg: TrainConfig, run_dir, names,
          on_step) -> TrainResult:
    opt = torch.optim.AdamW(masters.masters, lr=cfg.lr, betas=cfg.betas,
                            weight_decay=cfg.weight_decay)
    result = TrainResult()
    start = 0
    if run_dir is not None and (Path(run_dir) / "checkpoint.json").is_file() and \
            _same_settings(Path(run_dir), cfg):
        start = _load_checkpoint(Path(run_dir), masters.masters, names, opt, result)
        if masters.dynamic and result.loss_scale is not None:
            masters.scale, masters.clean = result.loss_scale
        masters.push()
        result.resumed_from = start
    seed_everything(cfg.seed + start)
    bar = tqdm(range(start, cfg.steps), desc=cfg.desc, disable=not cfg.progress, leave=False,
               initial=start, total=cfg.steps)
    for step in bar:
        t_step = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        masters.zero_grad()
        total, extras = 0.0, {}
        for micro in range(cfg.grad_accum):
            out = loss_fn(batch_at(step, micro))
            loss, parts = out if isinstance(out, tuple) else (out, {})
            if not torch.isfinite(loss):
                raise InterpError(
                    f"{cfg.desc}: loss became {loss.item()} at step {step}; lower the learning rate"
                )
            (loss * (masters.scale / cfg.grad_accum)).backward()
            total += loss.item() / cfg.grad_accum
            for k, v in parts.items():
                extras[k] = extras.get(k, 0.0) + float(v) / cfg.grad_accum
        if masters.unscale():
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(masters.masters, cfg.max_grad_norm)
            opt.step()
            masters.push()
        else:
            result.skipped_steps += 1
        result.loss_scale = (masters.scale, masters.clean)
        result.losses.append(total)
        result.extras.append(extras)
        timing.record(time.perf_counter() - t_step)
        if on_step is not None:
            on_step(step + 1)
        bar.set_postfix(loss=f"{total:.4f}")
        last = step + 1 == cfg.steps
        if run_dir is not None and (last or cfg.checkpoint_every and
                                    (step + 1) % cfg.checkpoint_every == 0):
            _save_checkpoint(Path(run_dir), step + 1, masters.masters, names, opt, result, cfg)
    bar.close()
    masters.zero_grad()
    if masters.any and cfg.keep_masters:  # float32 copies: returned only when asked for
        result.masters = {n: m.detach() for n, m, h in zip(names, masters.masters, masters.half)
                          if h}
    return result


def _save_checkpoint(run_dir: Path, step: int, params, names, opt, result: TrainResult,
                     cfg: TrainConfig) -> None:
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"param.{n}": p.detach().cpu().contiguous().clone() for n, p in zip(names, params)}
    state = opt.state_dict()
    for idx, st in state["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value.detach().cpu().contiguous().clone()
    tmp = run_dir / ".checkpoint.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, run_dir / "checkpoint.safetensors")
    meta = {"step": step, "losses": result.losses, "extras": result.extras,
            "loss_scale": result.loss_scale, "skipped_steps": result.skipped_steps,
            "config": json.loads(json.dumps(asdict(cfg), default=str)),
            "param_groups": [{k: v for k, v in g.items() if k != "params"}
                             for g in state["param_groups"]]}
    atomic_write_text(run_dir / "checkpoint.json", json.dumps(meta))


# settings a resumed run may change
RESUME_FREE = ("progress", "desc", "checkpoint_every", "keep_masters")


def _same_settings(run_dir: Path, cfg: TrainConfig) -> bool:
    """Whether the checkpoint was written under these settings (keys both sides have are
    compared); if not, it is not resumed: the training starts over (and says so)."""
    saved = json.loads((run_dir / "checkpoint.json").read_text()).get("config", {})
    now = json.loads(json.dumps(asdict(cfg), default=str))
    differ = sorted(k for k in saved.keys() & now.keys()
                    if k not in RESUME_FREE and saved[k] != now[k])
    if differ:
        print(f"{run_dir}: checkpoint written with other settings ({', '.join(differ)}); "
              "starting over", file=sys.stderr)
    return not differ


def _load_checkpoint(run_dir: Path, params, names, opt, result: TrainResult) -> int:
    from safetensors.torch import load_file

    meta = json.loads((run_dir / "checkpoint.json").read_text())
    try:
        tensors = load_file(str(run_dir / "checkpoint.safetensors"))
    except Exception as exc:
        raise InterpError(f"{run_dir}: corrupt checkpoint ({exc}); delete it to restart") from None
    with torch.no_grad():
        for n, p in zip(names, params):
            p.copy_(tensors[f"param.{n}"].to(p.dtype))
    state: dict[str, Any] = {"state": {}, "param_groups": opt.state_dict()["param_groups"]}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state["state"].setdefault(int(idx), {})[name] = value
    opt.load_state_dict(state)
    result.losses = list(meta["losses"])
    result.extras = list(meta.get("extras", []))
    if meta.get("loss_scale"):
        scale, clean = meta["loss_scale"]
        result.loss_scale = (float(scale), int(clean))
    result.skipped_steps = int(meta.get("skipped_steps", 0))
    return int(meta["step"])


# ------------------------------------------------------------------------------ causal-LM pieces
@dataclass
class TokenBatch:
    """Right-padded token ids and a mask of the positions whose *next* token is a target.

    tokens: (b, p); loss_mask: (b, p), 1 where tokens[:, t+1] is predicted and counted.
    """

    tokens: Int[Tensor, "b p"]
    loss_mask: Int[Tensor, "b p"]
    valid: Int[Tensor, "b p"] | None = None  # 1 on real tokens, 0 on right padding


def pack(sequences: Sequence[Sequence[int]], loss_from: Sequence[int], pad_id: int,
         device) -> TokenBatch:
    """Right-pad `sequences`; count the loss on tokens at index >= loss_from[i] (response only)."""
    width = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (seq, first) in enumerate(zip(sequences, loss_from)):
        tokens[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        # position t predicts token t+1; predicted tokens are first..len-1
        mask[i, max(first, 1) - 1: len(seq) - 1] = 1
    valid = (torch.arange(width)[None, :] < torch.tensor([len(s) for s in sequences])[:, None])
    return TokenBatch(tokens.to(device), mask.to(device), valid.long().to(device))


def target_nll(model, batch: TokenBatch) -> tuple[Float[Tensor, "n"], Int[Tensor, "n"]]:  # noqa: F821
    """NLL of every counted next token, and the batch row each belongs to.

    Only the counted positions are unembedded (the (batch x pos x vocab) logits tensor is the
    largest thing in a small model's step), and cross-entropy is the fused kernel.
    """
    import torch.nn.functional as F

    resid = model(batch.tokens, stop_at_layer=model.cfg.n_layers)
    keep = batch.loss_mask[:, :-1].bool()
    normed = model.ln_final(resid)[:, :-1][keep]  # (n, d_model)
    logits = model.unembed(normed[None])[0]  # (n, vocab)
    targets = batch.tokens[:, 1:][keep]
    rows = torch.arange(batch.tokens.shape[0], device=targets.device)[:, None].expand_as(keep)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # half-precision logits: the loss in float32
    return F.cross_entropy(logits, targets, reduction="none"), rows[keep]


def sequence_nll(model, batch: TokenBatch) -> Float[Tensor, "b"]:  # noqa: F821
    """Summed NLL of the counted tokens of each sequence (NPO and DPO compare these)."""
    nll, rows = target_nll(model, batch)
    return torch.zeros(batch.tokens.shape[0], device=nll.device).index_add(0, rows, nll)


def drawn_indices(rows_at: Callable[[int, int], Sequence[int]], steps: int,
                  grad_accum: int = 1) -> list[int]:
    """Every row index `rows_at(step, micro)` gives over a run (batches are pure functions of
    the step, so this is known before training)."""
    return [i for step in range(steps) for micro in range(grad_accum)
            for i in rows_at(step, micro)]


@torch.no_grad()
def sequence_nll_of(model, seqs: Sequence[tuple[Sequence[int], int]], which: Sequence[int],
                    device, batch_size: int = 32) -> Float[Tensor, "n"]:  # noqa: F821
    """`sequence_nll` of the (ids, first counted token) sequences listed in `which`, batched by
    length (right padding: a causal model's real positions never read the pads, so each value is
    the one a batch of any composition gives, to float noise); NaN for the others. The reference
    model's values, computed once for the sequences a training run will draw."""
    out = torch.full((len(seqs),), float("nan"))
    order = sorted(set(which), key=lambda i: len(seqs[i][0]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = pack([seqs[i][0] for i in chunk], [seqs[i][1] for i in chunk], 0, device)
        out[chunk] = sequence_nll(model, batch).float().cpu()
    return out


def lm_loss(model, batch: TokenBatch) -> Tensor:
    """Mean next-token cross-entropy over the counted positions."""
    nll, _ = target_nll(model, batch)
    if nll.numel() == 0:  # a mean over nothing is NaN: say why instead
        raise InterpError("a training batch has no target token (every response was cut by "
                          "max_len); raise max_len")
    return nll.mean()


def batch_rng(seed: int, step: int, micro: int = 0) -> random.Random:
    """The random stream of one (micro-)batch: a pure function of (seed, step, micro)."""
    return random.Random(seed * 1_000_003 + step * 101 + micro)


def sample_indices(n: int, k: int, seed: int, step: int, micro: int = 0) -> list[int]:
    """A batch of k indices out of n, a pure function of (seed, step, micro)."""
    rng = batch_rng(seed, step, micro)
    return [rng.randrange(n) for _ in range(k)]
