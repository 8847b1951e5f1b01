"""SNIP attribution and set-difference pruning (Wei et al. 2024, as used by the paper).

score(W) = |W| * sum over batches of |dL/dW|, for every attention and MLP weight matrix, once on
forget data and once on utility data. Per matrix, the weights in the top-q fraction of the forget
score that are not in the top-p fraction of the utility score are zeroed (p >= q).
The neuron-level variant scores an MLP neuron as the sum of its input row (W_in, W_gate column i)
and output column (W_out row i) and prunes whole neurons per layer by the same rule.
Pruning is applied inside `pruned(model, masks)`, which restores the weights on exit.

Memory (`snip_scores`, `snip_memory_bytes`): the sums of |dL/dW| are float32 (float64 for a
float64 model), one per scored matrix, on the model's device: 4 bytes per scored weight, 28 GB for
Zephyr-7B's 6.98e9 block weights. Each matrix's gradient is added to its sum by a
post-accumulate-grad hook and freed at once, so beside the sums the device holds one matrix's
gradient at a time, never a full set. A finished score set goes to host memory (or to one
safetensors file per matrix, read back lazily by `ScoreFiles`), so the forget scores cost no device
memory while the utility scores are computed, and the model's device holds no scores afterwards.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from interp.errors import InterpError
from interp.model.hooks import MLP_IN, MLP_OUT, block_weight_names, mlp_weight_name
from interp.training import TokenBatch, fixed_threads, lm_loss

SCORE_KEY = "score"  # the tensor's name inside each per-matrix safetensors file
SCORE_SUFFIX = ".safetensors"


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or the weights' own dtype where it is wider (float64)."""
    return torch.promote_types(dtype, torch.float32)


def _accumulate_into(total: Tensor):
    """A post-accumulate-grad hook: add |grad| into `total` (upcast element by element, so a bf16
    gradient is summed in float32) and free the gradient at once."""

    def hook(param: Tensor) -> None:
        grad = param.grad
        param.grad = None  # no full set of gradients is ever held beside the sums
        if grad is not None:
            total.add_(grad.abs_())  # the gradient is ours alone: abs in place, no copy
    return hook


@fixed_threads()  # gradients: repeatable whatever the caller's thread count
def snip_scores(model: HookedTransformer, batches: Iterable[TokenBatch],
                names: list[str] | None = None, progress: bool = False,
                desc: str = "SNIP", out_dir: Path | None = None
                ) -> Mapping[str, Float[Tensor, "..."]]:
    """|W| * sum_b |dL_b/dW| per weight matrix, float32, on the CPU.

    Without `out_dir`: a dict of the scores in host memory. With `out_dir`: each matrix's score is
    written to `out_dir/<name>.safetensors` (atomically) as soon as it is finished and a
    `ScoreFiles` mapping is returned that reads one matrix from its file on each access, so a
    caller can hold both score sets (forget and utility) without the host memory for both.

    Precision: the sums are float32 (float64 for a float64 model); each |grad| is upcast exactly
    (bf16 and fp16 embed in float32) and the sum is never taken in bf16. A float32 sum of n
    positive terms has a relative error of at most about (n - 1) * 2^-24 ~ n * 6e-8 (there is no
    cancellation among positive terms), i.e. < 1e-4 relative for n up to ~1,600 batches: the paper
    preset's 512 samples a side (one per batch) give <= 3e-5, far below what moves a top-q
    threshold; the final |W| * sum is rounded once to float32, as the float64 sums were before.

    Memory on the model's device (see `snip_memory_bytes`): the weights + one float32 sum per
    scored matrix (4 bytes per scored weight: 28 GB for Zephyr-7B's 6.98e9 block weights) + one
    matrix's gradient at a time (its post-accumulate-grad hook adds it to the sum and frees it) +
    activations. Once the set is finished, each matrix's score is moved to the CPU (or its file)
    and its device sum freed before the next, so nothing of it stays on the device.

    The hooks are always removed, and the parameters' requires_grad flags, their gradients (None)
    and the model's train/eval mode are restored, also when a batch raises.
    """
    names = list(names or block_weight_names(model))
    params = dict(model.named_parameters())
    unknown = [n for n in names if n not in params]
    if unknown:
        raise InterpError(f"{desc}: no such weights to score: {unknown[:3]}")
    if out_dir is not None:
        out_dir = Path(out_dir)
        try:  # fail before the scoring, not after it
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InterpError(f"cannot write SNIP scores to {out_dir}: {exc.strerror}; choose a "
                              "writable folder") from None
    sums = {n: torch.zeros(params[n].shape, dtype=_sum_dtype(params[n].dtype),
                           device=params[n].device) for n in names}
    was_training = model.training
    flags = {n: p.requires_grad for n, p in params.items()}
    handles = []
    model.eval()
    seen = 0
    try:
        model.zero_grad(set_to_none=True)  # a stale gradient would be added to the first batch's
        for p in params.values():
            p.requires_grad_(False)
        for n in names:
            params[n].requires_grad_(True)
            handles.append(params[n].register_post_accumulate_grad_hook(_accumulate_into(sums[n])))
        for batch in tqdm(list(batches), desc=desc, disable=not progress, leave=False):
            loss = lm_loss(model, batch)
            if not torch.isfinite(loss):
                raise InterpError(f"{desc}: the loss is {loss.item()}; check the model and data")
            loss.backward()
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    if seen == 0:
        raise InterpError(f"{desc}: no batches to score")
    scores = {}
    with torch.no_grad():
        for n in names:  # one matrix at a time: its device sum is freed before the next
            total = sums.pop(n)
            total.mul_(params[n].detach().abs())
            score = total.to(device="cpu", dtype=torch.float32)
            del total
            if out_dir is None:
                scores[n] = score
            else:
                _save_score(out_dir / f"{n}{SCORE_SUFFIX}", score)
    return scores if out_dir is None else ScoreFiles(out_dir, names)


def _save_score(path: Path, score: Tensor) -> None:
    """Write one matrix's score as a safetensors file, atomically (a temporary file in the same
    folder, fsynced, then renamed over `path`)."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({SCORE_KEY: score.contiguous()}, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ScoreFiles(Mapping):
    """SNIP scores kept as one safetensors file per matrix (`snip_scores(..., out_dir=...)`):
    a read-only mapping from matrix name to its float32 CPU score, loaded from disk on each access
    (nothing is cached, so holding the mapping costs no memory)."""

    def __init__(self, folder: Path, names: Iterable[str] | None = None):
        self.folder = Path(folder)
        if names is None:  # every score file in the folder (not the temporary ones)
            names = sorted(p.name[: -len(SCORE_SUFFIX)]
                           for p in self.folder.glob(f"*{SCORE_SUFFIX}")
                           if not p.name.startswith("."))
        self.names = list(names)
        self._known = set(self.names)

    def path(self, name: str) -> Path:
        """The file of one matrix's score."""
        return self.folder / f"{name}{SCORE_SUFFIX}"

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._known:
            raise KeyError(name)
        from safetensors import safe_open

        try:
            with safe_open(str(self.path(name)), framework="pt", device="cpu") as f:
                return f.get_tensor(SCORE_KEY)
        except FileNotFoundError:
            raise InterpError(f"SNIP score file missing: {self.path(name)}; rerun the scoring") \
                from None

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"ScoreFiles({str(self.folder)!r}, {len(self.names)} matrices)"


def snip_memory_bytes(n_params_total: int, n_params_scored: int, dtype_bytes: int,
                      largest_matrix_numel: int, other_scores_on_device: bool = False) -> int:
    """Peak bytes of `snip_scores` on the model's device, activations not counted: the weights
    (`n_params_total` of `dtype_bytes` each) + the sums (4 bytes per scored weight; 8 for a float64
    model) + one matrix's gradient (or, when finishing, one matrix's |W|) + the other score set
    (float32) if a caller keeps it on the device (`snip_scores` itself returns it on the host: 0).
    """
    sum_bytes = max(4, dtype_bytes)
    other = 4 * n_params_scored if other_scores_on_device else 0
    return (n_params_total * dtype_bytes + n_params_scored * sum_bytes
            + largest_matrix_numel * dtype_bytes + other)


def check_fractions(q: float, p: float) -> None:
    """An `InterpError` unless 0 < q <= p <= 1."""
    for name, v in (("q", q), ("p", p)):
        if not 0 < v <= 1:
            raise InterpError(f"pruning fraction {name}={v} must be in (0, 1]; e.g. 0.01 for 1%")
    if q > p:
        raise InterpError(f"pruning needs q <= p (forget top-q, utility top-p); got q={q} p={p}")


def top_mask(scores: Tensor, frac: float) -> Bool[Tensor, "..."]:
    """True on exactly round(frac * numel) entries with the highest scores."""
    flat = scores.reshape(-1)
    k = int(round(frac * flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        mask[flat.topk(k).indices] = True
    return mask.reshape(scores.shape)


def set_difference(forget: Tensor, utility: Tensor, q: float, p: float) -> Bool[Tensor, "..."]:
    """The top-q forget entries that are not top-p utility entries."""
    check_fractions(q, p)
    return top_mask(forget, q) & ~top_mask(utility, p)


@dataclass
class Thresholds:
    """Per matrix, the score above which an entry is in the top fraction, for each fraction.

    Storing thresholds (not masks) keeps a grid over many (p, q) cells at the memory of the scores.
    """

    values: dict[str, dict[float, float]]

    @classmethod
    def of(cls, scores: Mapping[str, Tensor], fractions: Iterable[float],
           device: torch.device | str | None = None) -> "Thresholds":
        """The thresholds of every matrix's scores at each fraction (inf where the fraction keeps no
        entry). With `device`, each matrix is moved there (one at a time) to be sorted."""
        fractions = list(fractions)
        out = {}
        for name, s in scores.items():
            flat = (s if device is None else s.to(device)).reshape(-1).float()
            ranked = flat.sort(descending=True).values  # one sort serves every fraction
            del flat
            out[name] = {}
            for f in fractions:
                k = int(round(f * ranked.numel()))
                out[name][f] = float("inf") if k == 0 else float(ranked[k - 1])
            del ranked
        return cls(out)


def grid_mask(forget: Tensor, utility: Tensor, tf: float, tu: float) -> Tensor:
    """The set-difference mask from thresholds: forget score >= `tf` and utility score below
    `tu`."""
    return (forget >= tf) & ~(utility >= tu)


def neuron_scores(model: HookedTransformer, scores: Mapping[str, Tensor]) -> Float[Tensor, "l m"]:
    """Per layer and MLP neuron: the summed score of its input column(s) and output row."""
    rows = []
    for layer in range(model.cfg.n_layers):
        total = scores[mlp_weight_name(layer, MLP_OUT)].double().sum(-1)
        for w in MLP_IN:
            key = mlp_weight_name(layer, w)
            if key in scores:
                total = total + scores[key].double().sum(0)
        rows.append(total)
    return torch.stack(rows)


def neuron_set_difference(forget: Tensor, utility: Tensor, q: float,
                          p: float) -> Bool[Tensor, "l m"]:
    """Per layer: the top-q neurons by forget score that are not top-p by utility score."""
    check_fractions(q, p)
    return torch.stack([top_mask(f, q) & ~top_mask(u, p) for f, u in zip(forget, utility)])


def neuron_weight_masks(model: HookedTransformer,
                        neurons: Bool[Tensor, "l m"]) -> dict[str, Tensor]:
    """The weight masks that remove whole neurons (input columns and output rows)."""
    params = dict(model.named_parameters())
    masks = {}
    for layer in range(model.cfg.n_layers):
        sel = neurons[layer].to(model.cfg.device)
        for w in MLP_IN:
            key = mlp_weight_name(layer, w)
            if key in params:
                masks[key] = sel[None, :].expand_as(params[key])
        key = mlp_weight_name(layer, MLP_OUT)
        masks[key] = sel[:, None].expand_as(params[key])
    return masks


@contextmanager
def pruned(model: HookedTransformer, masks: dict[str, Tensor]) -> Iterator[HookedTransformer]:
    """The model with the masked weights zeroed; the original weights come back on exit."""
    params = dict(model.named_parameters())
    unknown = set(masks) - set(params)
    if unknown:
        raise InterpError(f"no such weights to prune: {sorted(unknown)[:3]}")
    saved = {}
    try:
        with torch.no_grad():
            for name, mask in masks.items():
                saved[name] = params[name].detach().clone()
                params[name].masked_fill_(mask.to(params[name].device), 0.0)
        yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                params[name].copy_(original)
