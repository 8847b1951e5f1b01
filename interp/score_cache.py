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
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from interp.store import read_json, write_json

SCORES_JSON = "scores.json"


def _weights_stamp(folder: Path) -> list | None:
    from interp.model.load import WEIGHTS

    f = folder / WEIGHTS
    if not f.is_file():
        return None
    st = f.stat()
    return [st.st_size, st.st_mtime_ns]


def _tensor_stamp(model: nn.Module) -> list[tuple[int, int]]:
    return [(p.data_ptr(), p._version) for p in model.parameters()]


def mark_source(model: nn.Module, folder: Path) -> None:
    """Record where `model` was loaded from and its parameters' identity (`load_model`)."""
    stamp = _weights_stamp(folder)
    if stamp is not None:
        object.__setattr__(model, "interp_source",
                           {"folder": str(folder.resolve()), "weights": stamp,
                            "tensors": _tensor_stamp(model)})


def untouched(model: nn.Module) -> bool:
    """The model as loaded: same tensors at the same versions, no adapters, no hooks."""
    from interp.model.lora import has_lora

    src = getattr(model, "interp_source", None)
    if src is None or has_lora(model):
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return False
    return _tensor_stamp(model) == [tuple(t) for t in src["tensors"]]


def question_key(question, settings: dict, model: nn.Module) -> str:
    blob = json.dumps([question.to_json(), settings, str(model.cfg.dtype),
                       torch.device(model.cfg.device).type], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


_RECORDER: dict[str, list[float]] | None = None


@contextmanager
def recording() -> Iterator[dict[str, list[float]]]:
    """`with recording() as kept:` keeps (key -> probabilities) of every evaluation inside."""
    global _RECORDER
    previous, _RECORDER = _RECORDER, {}
    try:
        yield _RECORDER
    finally:
        _RECORDER = previous


def is_recording() -> bool:
    return _RECORDER is not None


def record(keys: Sequence[str], probs: torch.Tensor) -> None:
    if _RECORDER is not None:
        for k, p in zip(keys, probs.tolist()):
            _RECORDER[k] = p


def save_scores(folder: Path, entries: dict[str, list[float]]) -> None:
    """Write the protected model's scores beside its weights (after `save_model`)."""
    stamp = _weights_stamp(Path(folder))
    if stamp is not None and entries:
        write_json(Path(folder) / SCORES_JSON, {"weights": stamp, "scores": entries})


_LOADED: dict[str, tuple[list, dict]] = {}


def cached_scores(model: nn.Module) -> dict[str, list[float]]:
    """The scores kept for this model's folder, if they were made with its weights file and
    the model is untouched since loading; else an empty dict."""
    src = getattr(model, "interp_source", None)
    if src is None:
        return {}
    path = Path(src["folder"]) / SCORES_JSON
    if not path.is_file():
        return {}
    key = f"{path}:{path.stat().st_mtime_ns}"
    if key not in _LOADED:
        data = read_json(path)
        _LOADED[key] = (data.get("weights"), data.get("scores", {}))
    weights, scores = _LOADED[key]
    if weights != src["weights"] or not untouched(model):
        return {}
    return scores
