"""What every `interp bench` row shares: the result record, timing with a warm-up, the spread
of repetitions, and the context (the embedded model, its questions, the repeat count)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class BenchResult:
    name: str
    ours: float | None
    peer: float | None
    unit: str
    ratio: float | None
    goal: float
    met: bool | None
    detail: dict = field(default_factory=dict)


def _timed(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _result(name, ours, peer, unit, ratio, goal, **detail) -> BenchResult:
    return BenchResult(name, ours, peer, unit, ratio, goal,
                       None if ratio is None else ratio >= goal, detail)


# ------------------------------------------------------------------------------------ context
@dataclass
class Context:
    model: object  # HookedTransformer
    questions: list
    repeats: int
    batch_size: int = 32

    @property
    def tokenizer(self):
        from interp.model.load import get_tokenizer

        return get_tokenizer(self.model)

    def hf_model(self):
        """The same weights as a plain transformers model (the embedded GGUF, dequantized)."""
        from interp.model.load import _load_hf_folder, embedded_gguf_path

        gguf = embedded_gguf_path()
        return _load_hf_folder(gguf.parent, device=torch.device("cpu"), dtype=torch.float32,
                               trust_remote_code=False, gguf_file=gguf.name).eval()


