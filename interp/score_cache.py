"""The protected model's own scores, kept beside its weights and reused by every attack.

Each attack starts by scoring the unmodified protected model on its questions ("no attack"), and
before this cache the run scored the same model on the same questions five times over. Now the
protection's final `measure` keeps every question's four probabilities in the model folder
(`scores.json`, next to `model.safetensors`), and `evaluate` serves a question from there when:

- the model was loaded from that folder and its weights file is the one the scores were made
  with (size and modification time, recorded in both places);
- the model is untouched since loading: every parameter is the same tensor at the same version
  (no in-place edit, no replaced tensor), no LoRA adapter, no forward hook or pre-hook on any
  module (TransformerLens hooks included), and `evaluate` was given no hooks;
- the settings match: chat mode, prefix, format, letter-id rule, dtype and device type.

Only the protection writes the file (once, after training), so what an attack reads does not
depend on which attack ran first or in which process: the same numbers with any executor. The
served probabilities are the ones the protection computed, in its batches; the same question in
another batch can differ in the last float bits (tested against a fresh computation).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from interp.model.files import weights_stamp
from interp.model.lora import has_lora
from interp.model.state import find_state, tensor_stamp
from interp.store import read_json, write_json

SCORES_JSON = "scores.json"


def untouched(model: nn.Module) -> bool:
    """The model as loaded: same tensors at the same versions, no adapters, no hooks."""
    found = find_state(model)
    src = found.source if found is not None else None
    if src is None or has_lora(model):
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return False
    return tensor_stamp(model) == src.tensors


def question_key(question, settings: dict, model: nn.Module) -> str:
    """A hash of the question, the scoring settings and the model's dtype and device type: the
    question's key in `scores.json`."""
    blob = json.dumps([question.to_json(), settings, str(model.cfg.dtype),
                       torch.device(model.cfg.device).type], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


class Recorder:
    """Keeps (key -> probabilities) of every evaluation while a `recording()` block is open; the
    innermost open block gets them."""

    def __init__(self) -> None:
        self._open: list[dict[str, list[float]]] = []

    @contextmanager
    def recording(self) -> Iterator[dict[str, list[float]]]:
        """A block inside which every evaluation's (key -> probabilities) are collected into the
        yielded dict."""
        kept: dict[str, list[float]] = {}
        self._open.append(kept)
        try:
            yield kept
        finally:  # by identity: an empty dict equals another
            self._open[:] = [d for d in self._open if d is not kept]

    @property
    def active(self) -> bool:
        """Whether a `recording()` block is open."""
        return bool(self._open)

    def record(self, keys: Sequence[str], probs: torch.Tensor) -> None:
        """Keep each key's four probabilities in the innermost open block (nothing when none is
        open)."""
        if self._open:
            self._open[-1].update(zip(keys, probs.tolist()))


RECORDER = Recorder()  # the process's one recorder: the protection records, `evaluate` feeds it


@contextmanager
def recording() -> Iterator[dict[str, list[float]]]:
    """`with recording() as kept:` keeps (key -> probabilities) of every evaluation inside."""
    with RECORDER.recording() as kept:
        yield kept


def is_recording() -> bool:
    """Whether a `recording()` block is open."""
    return RECORDER.active


def record(keys: Sequence[str], probs: torch.Tensor) -> None:
    """Keep each key's probabilities in the innermost open `recording()` block, if any."""
    RECORDER.record(keys, probs)


def save_scores(folder: Path, entries: dict[str, list[float]]) -> None:
    """Write the protected model's scores beside its weights (after `save_model`)."""
    stamp = weights_stamp(folder)
    if stamp is not None and entries:
        write_json(Path(folder) / SCORES_JSON, {"weights": list(stamp), "scores": entries})


@lru_cache(maxsize=8)
def _read_kept(path: str, mtime_ns: int) -> tuple[tuple[int, ...] | None, dict]:
    """(weights stamp, scores) of one version of a scores file."""
    data = read_json(Path(path))
    weights = data.get("weights")
    return (tuple(weights) if weights is not None else None), data.get("scores", {})


def cached_scores(model: nn.Module) -> dict[str, list[float]]:
    """The scores kept for this model's folder, if they were made with its weights file and
    the model is untouched since loading; else an empty dict."""
    found = find_state(model)
    src = found.source if found is not None else None
    if src is None:
        return {}
    path = Path(src.folder) / SCORES_JSON
    if not path.is_file():
        return {}
    weights, scores = _read_kept(str(path), path.stat().st_mtime_ns)
    if weights != src.weights or not untouched(model):
        return {}
    return scores
