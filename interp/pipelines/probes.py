"""How `interp plan` measures one step of each stage: synthetic data of the preset's lengths, the
stage's real code for a few steps, seconds per step (median after the warm-up) and peak memory."""

from __future__ import annotations

import functools
import json
import random
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from interp import timing
from interp.errors import InterpError
from interp.pipelines.presets import Preset


def device_memory_mb(device: torch.device) -> float:
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
    return isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or \
        "out of memory" in str(exc).lower()


def _median_after_warmup(times: list[float]) -> float:
    if not times:
        raise InterpError("no step was timed")
    return statistics.median(times[1:] if len(times) > 1 else times)


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
        if self._original is None:
            from interp.model.state import copy_model

            self._original = copy_model(self.model)
        return self._original

    def drop_original(self) -> None:
        self._original = None


def _timed_calls(fn: Callable[[], int], steps: int, device: torch.device) -> float:
    """Seconds per unit over `steps` calls (each returns how many units it did)."""
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        units = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t) / max(1, units))
    return _median_after_warmup(times)


def _score(pr: Probe) -> float:
    from interp.scoring import evaluate

    questions = pr.data.questions("forget_eval")[:32]
    return _timed_calls(lambda: evaluate(pr.model, questions, batch_size=32,
                                         progress=False).n, pr.steps, pr.device)


def _protection(name: str) -> Callable[[Probe], float]:
    def measure(pr: Probe) -> float:
        from interp.protections.base import registry

        module = registry()[name]
        cfg = replace(pr.preset.protections[name], steps=pr.steps)
        with timing.step_times() as times:
            module.train(pr.model, pr.data, cfg, run_dir=None, progress=False)
        return _median_after_warmup(times)
    return measure


def _lora(pr: Probe) -> float:
    from interp.attacks import finetune
    from interp.protections.common import encode_pair

    cfg = pr.preset.attacks["finetune"]
    cfg = replace(cfg, min_steps=0, max_steps=pr.steps, epochs=1)
    texts = pr.data.corpus("unrelated")[: cfg.batch_size * pr.steps]
    seqs = [encode_pair(pr.model, finetune.WIKI_PROMPT, finetune.WIKI_PREFIX + t, chat=True,
                        max_len=cfg.max_len) for t in texts]
    with timing.step_times() as times:
        finetune.finetune_cell(pr.model, seqs, cfg, None, lambda: None, progress=False)
    return _median_after_warmup(times)


def _lora_forget(pr: Probe) -> float:
    """A forget cell's optimizer step: forget statements at `forget_batch_size`."""
    from interp.attacks import finetune
    from interp.protections.common import encode_texts

    cfg = finetune.kind_config(pr.preset.attacks["finetune"], "forget")
    cfg = replace(cfg, min_steps=0, max_steps=pr.steps, epochs=1)
    texts = [r["text"] for r in pr.data.rows("forget_corpus")][: cfg.batch_size * pr.steps]
    seqs = [(ids, 1) for ids in encode_texts(pr.model, texts, max_len=cfg.max_len)]
    with timing.step_times() as times:
        finetune.finetune_cell(pr.model, seqs, cfg, None, lambda: None, progress=False)
    return _median_after_warmup(times)


def _gcg(pr: Probe) -> float:
    from interp.attacks import gcg

    cfg = pr.preset.attacks["gcg"]
    cfg = replace(cfg, steps=pr.steps, eval_every=0, progress=False)
    train = pr.data.questions("forget_train")[: cfg.n_train]
    original = pr.original if cfg.objective == "enhanced" else None
    with timing.step_times() as times:
        gcg.run_gcg(pr.model, train, [], cfg, original=original)
    pr.drop_original()
    return _median_after_warmup(times)


def _snip(pr: Probe) -> float:
    from interp.attacks.prune import snip_data, snip_scores

    cfg = pr.preset.attacks["prune"]
    # one batch's seconds: the synthetic pairs stand for whichever texts the recipe picks
    sd = snip_data(pr.model, pr.data, replace(cfg, n_forget=cfg.batch_size, snip_data="pairs"))
    batch = sd.forget[:1]
    return _timed_calls(lambda: (snip_scores(pr.model, batch, progress=False),
                                 int(batch[0].tokens.shape[0]))[1], pr.steps, pr.device)


def _directions(pr: Probe) -> float:
    from interp.attacks.directions import robust_mean

    cfg = pr.preset.attacks["directions"].directions
    prompts = pr.data.questions("forget_train")[: cfg.batch_size]
    return _timed_calls(lambda: (robust_mean(pr.model, prompts, cfg), len(prompts))[1],
                        pr.steps, pr.device)


def _lens(pr: Probe) -> float:
    from interp.attacks.lens import logit_lens

    cfg = pr.preset.attacks["lens"].lens
    questions = pr.data.questions("forget_eval")[: cfg.batch_size]
    return _timed_calls(lambda: (logit_lens(pr.model, questions, cfg), len(questions))[1],
                        pr.steps, pr.device)


MEASURES: dict[str, Callable[[Probe], float]] = {
    "score": _score, "rmu": _protection("rmu"), "npo": _protection("npo"),
    "dpo": _protection("dpo"), "lora": _lora, "lora_forget": _lora_forget, "gcg": _gcg,
    "snip": _snip,
    "directions": _directions, "lens": _lens}
NEEDS = {"rmu": ("protections", "rmu"), "npo": ("protections", "npo"),
         "dpo": ("protections", "dpo"), "lora": ("attacks", "finetune"),
         "lora_forget": ("attacks", "finetune"),
         "gcg": ("attacks", "gcg"), "snip": ("attacks", "prune"),
         "directions": ("attacks", "directions"), "lens": ("attacks", "lens")}
