"""What `interp plan` measures with: synthetic data of the preset's lengths, the probe every
module's `probes(cfg)` reads (`Probe`), peak memory, and the scorer's own probe. Seconds per step
are the median after the warm-up (`interp.timing`)."""

from __future__ import annotations

import functools
import json
import random
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from interp import timing
from interp.cost import StepProbe
from interp.pipelines.presets import Preset


def device_memory_mb(device: torch.device) -> float:
    """The device's total memory in MB (a GPU's, or the machine's RAM for a CPU; inf if unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def _rss_mb() -> float:
    import os

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """The peak during the block: CUDA allocator peak, or the sampled resident set on a CPU."""
    out = {"mb": 0.0}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield out
        finally:
            out["mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    stop = threading.Event()
    peak = [_rss_mb()]

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], _rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["mb"] = max(peak[0], _rss_mb())


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is the device (or the process) running out of memory."""
    return isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or \
        "out of memory" in str(exc).lower()


@functools.lru_cache(maxsize=1)
def _corpus_words() -> tuple[str, ...]:
    from interp.data.unrelated import load_unrelated

    return tuple(" ".join(load_unrelated()).split())


def _words(rng: random.Random, n: int) -> str:
    words = _corpus_words()
    start = rng.randrange(0, max(1, len(words) - n))
    return " ".join(words[start:start + n])


def _text_of_tokens(tok, rng: random.Random, n_tokens: int) -> str:
    """Text of about `n_tokens` tokens."""
    words = max(1, n_tokens)
    text = _words(rng, words)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    while len(ids) > n_tokens and words > 1:
        words = max(1, int(words * n_tokens / len(ids)))
        text = _words(rng, words)
        ids = tok(text, add_special_tokens=False)["input_ids"]
    return text


def synthetic_data(model, folder: Path, prompt_tokens: int, long_tokens: int, n: int = 96,
                   seed: int = 0):
    """A data folder of `n` forget and `n` retain letter questions whose scored prompt is about
    `prompt_tokens` tokens, and forget/retain/unrelated texts of `long_tokens` tokens."""
    from interp.data.prepare import prepare_data
    from interp.data.questions import Question
    from interp.model.load import get_tokenizer
    from interp.prompts import letter_prompt
    from interp.store import atomic_write_text

    tok = get_tokenizer(model)
    rng = random.Random(seed)
    probe = Question("x", ("a", "b", "c", "d"), 0, subject="biology", format="letter")
    overhead = len(tok(letter_prompt(probe))["input_ids"])
    stem_tokens = max(4, prompt_tokens - overhead - 4 * 8)

    def question(i: int) -> Question:
        choices = tuple(_words(rng, 6) for _ in range(4))
        return Question(_text_of_tokens(tok, rng, stem_tokens) + "?", choices, i % 4,
                        subject="biology", format="letter")

    data = prepare_data([question(i) for i in range(n)], [question(i) for i in range(n)],
                        folder, "random-weights", seed)
    for name in ("forget_corpus", "retain_corpus", "unrelated"):
        domain = name.split("_")[0] if name != "unrelated" else name  # forget-i: question i
        rows = [{"text": _text_of_tokens(tok, rng, long_tokens), "entity": f"{domain}-{i}"}
                for i in range(n)]
        atomic_write_text(folder / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return data


@dataclass
class Probe:
    """What every stage's measurement reads."""

    model: Any
    data: Any
    preset: Preset
    steps: int
    device: torch.device
    tmp: Path
    _original: Any = None

    @property
    def original(self):
        """A copy of the model standing in for the unprotected one, made when first asked for."""
        if self._original is None:
            from interp.model.state import copy_model

            self._original = copy_model(self.model)
        return self._original

    def drop_original(self) -> None:
        """Forget the copy made by `original`, freeing its memory."""
        self._original = None


def _score_question(pr: Probe, cfg=None) -> float:
    from interp.scoring import evaluate

    questions = pr.data.questions("forget_test")[:32]
    return timing.timed_calls(lambda: evaluate(pr.model, questions, batch_size=32,
                                               progress=False).n, pr.steps, pr.device)


def score_probe() -> StepProbe:
    """The scorer's probe: seconds per question scored (every preset scores)."""
    return StepProbe("question scored", _score_question, knob="a smaller scoring batch")
