"""What every benchmark row shares: the result record, timing with a warm-up, the spread of
repetitions, and the context (the embedded model, its questions, the repeat count)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class BenchResult:
    """One row: both sides' rates, `ratio` oriented so that higher is better for us, the goal
    it is held to, whether it met it (None when skipped), and the row's own details."""

    name: str
    ours: float | None
    peer: float | None
    unit: str
    ratio: float | None
    goal: float
    met: bool | None
    detail: dict = field(default_factory=dict)


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after one untimed warm-up call."""
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def spread(xs: list[float]) -> dict:
    """Median, min, max and count of repeated timings."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def row(name: str, ours: float | None, peer: float | None, unit: str, ratio: float | None,
        goal: float, **detail) -> BenchResult:
    """A result row; `met` is whether `ratio` reaches `goal`, None when there is no ratio."""
    return BenchResult(name, ours, peer, unit, ratio, goal,
                       None if ratio is None else ratio >= goal, detail)


# ------------------------------------------------------------------------------------ context
@dataclass
class Context:
    """What the rows run on: the embedded model, its questions, repeats and scoring batch."""

    model: object  # HookedTransformer
    questions: list
    repeats: int
    batch_size: int = 32

    @property
    def tokenizer(self):
        """The hooked model's tokenizer."""
        from interp.model.load import get_tokenizer

        return get_tokenizer(self.model)

    def hf_model(self):
        """The same weights as a plain transformers model (the embedded GGUF, dequantized to
        float32 on the CPU), loaded by transformers itself: the peer's side of a row."""
        from transformers import AutoModelForCausalLM

        from interp.model.load import embedded_gguf_path

        gguf = embedded_gguf_path()
        return AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True,
            trust_remote_code=False).eval()
