"""The one scorer: argmax over four candidate tokens at the last position of a hooked forward pass.

`evaluate(model, questions, hooks=..., prefix=..., chat=...)` scores any combination of attack
(forward hooks, an adversarial prefix) and prompt mode (raw text or chat template), in the paper's
letter format or the cloze format, batched with left padding.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from interp import score_cache
from interp.data.questions import Question
from interp.errors import InterpError
from interp.model.hooks import readout
from interp.model.state import find_state, get_tokenizer, set_state
from interp.padding import pad_id, pad_left
from interp.prompts import Encoded, check_letter_ids, encode_question

Hook = tuple[str | Callable[[str], bool], Callable]


@dataclass
class EvalConfig:
    """Scoring settings: questions per batch, raw or chat prompts, an adversarial prefix, the format
    (None: each question's own), a progress bar, and the letter-id rule (None: the model's)."""

    batch_size: int = 16
    chat: bool = False
    prefix: str | None = None
    format: str | None = None  # None: each question's own format
    progress: bool = True
    letter_ids: str | None = None  # None: the model's rule (`set_letter_ids`), else in context


@dataclass
class EvalResult:
    """Per-question probabilities over the four candidates (A-D order), predictions, accuracy.

    probs: (n, 4) softmax over the four candidate logits; preds, answers: (n,).
    """

    probs: Float[Tensor, "n 4"]
    preds: Int[Tensor, "n"]
    answers: Int[Tensor, "n"]
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.answers.shape[0]
        assert self.probs.shape == (n, 4) and self.preds.shape == (n,)

    @property
    def n(self) -> int:
        """The number of questions."""
        return int(self.answers.shape[0])

    @property
    def accuracy(self) -> float:
        """The share of questions answered right (NaN for none)."""
        return int(self.correct.sum()) / self.n if self.n else float("nan")

    @property
    def correct(self) -> Tensor:
        """(n,) booleans: whether each prediction is the answer."""
        return self.preds == self.answers

    def to_json(self) -> dict:
        """Accuracy, count, the settings and per question its prediction, answer and four
        probabilities."""
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            **self.settings,
            "items": [
                {"index": i, "pred": int(p), "answer": int(a), "probs": [float(x) for x in pr]}
                for i, (p, a, pr) in enumerate(zip(self.preds, self.answers, self.probs))
            ],
        }


@contextmanager
def maybe_hooks(model: HookedTransformer, hooks: Sequence[Hook] | None) -> Iterator[None]:
    """`model.hooks(...)` when there are hooks; removed on exit whatever happens."""
    if not hooks:
        yield
        return
    with model.hooks(fwd_hooks=list(hooks)):
        yield


def last_logits(
    model: HookedTransformer, tokens: Int[Tensor, "b p"], mask: Int[Tensor, "b p"] | None
) -> Float[Tensor, "b vocab"]:
    """Logits at the last position only: blocks, then final norm and unembedding on one position.

    Left padding puts every prompt's last token at position -1. Skipping the unembedding of the
    other positions saves (batch x pos x vocab) work; the result equals `model(tokens)[:, -1]`.
    """
    resid = model(tokens, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
    last = resid[:, -1:, :]
    return readout(model, last)[:, 0, :]


def set_letter_ids(model: HookedTransformer, rule: str) -> HookedTransformer:
    """Make `rule` ("in-context" or "official", see `interp.prompts`) the letter-id rule every
    score of this model uses unless a call names another (`interp.copy_model` copies keep it)."""
    set_state(model, letter_ids=check_letter_ids(rule))
    return model


def letter_rule(model: HookedTransformer, rule: str | None = None) -> str:
    """`rule`, else the model's rule (`set_letter_ids`), else "in-context"."""
    found = find_state(model)
    return check_letter_ids(rule or (found.letter_ids if found is not None else None)
                            or "in-context")


def encode_all(
    model: HookedTransformer, questions: Sequence[Question], cfg: EvalConfig
) -> list[Encoded]:
    """Each question's prompt ids and candidate ids under `cfg`; an `InterpError` for a prompt
    longer than the model's context."""
    tokenizer = get_tokenizer(model)
    rule = letter_rule(model, cfg.letter_ids)
    encoded = [
        encode_question(tokenizer, q, chat=cfg.chat, prefix=cfg.prefix, fmt=cfg.format,
                        letter_ids=rule)
        for q in questions
    ]
    n_ctx = model.cfg.n_ctx
    for i, e in enumerate(encoded):
        if len(e.ids) > n_ctx:
            raise InterpError(
                f"question {i} is {len(e.ids)} tokens long, more than the model's context of "
                f"{n_ctx}; shorten it or drop it"
            )
    return encoded


@torch.no_grad()
def evaluate(
    model: HookedTransformer,
    questions: Sequence[Question],
    *,
    hooks: Sequence[Hook] | None = None,
    prefix: str | None = None,
    chat: bool = False,
    fmt: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    letter_ids: str | None = None,
) -> EvalResult:
    """Score multiple-choice questions; see the module docstring. `letter_ids`: the letter
    format's candidate rule (`interp.prompts`); None: the model's (`set_letter_ids`)."""
    cfg = EvalConfig(batch_size=batch_size, chat=chat, prefix=prefix, format=fmt,
                     progress=progress, letter_ids=letter_rule(model, letter_ids))
    if not questions:
        raise InterpError("no questions to score")
    if batch_size < 1:
        raise InterpError(f"batch size must be at least 1, got {batch_size}")
    encoded = encode_all(model, questions, cfg)
    pad = pad_id(model)
    device = model.cfg.device
    probs = torch.empty((len(encoded), 4), dtype=torch.float32)
    # the untouched protected model's own scores, kept by its protection (`interp.score_cache`)
    kept = score_cache.cached_scores(model) if not hooks else {}
    keys = []
    if kept or score_cache.is_recording():
        key_settings = {"chat": chat, "prefix": prefix, "format": fmt,
                        "letter_ids": cfg.letter_ids}
        keys = [score_cache.question_key(q, key_settings, model) for q in questions]
    todo = [i for i in range(len(encoded)) if not keys or keys[i] not in kept]
    for i in set(range(len(encoded))) - set(todo):
        probs[i] = torch.tensor(kept[keys[i]], dtype=torch.float32)
    # sort by length so batches pad little; restore the order at the end
    order = sorted(todo, key=lambda i: len(encoded[i].ids))
    was_training = model.training
    model.eval()
    try:
        with maybe_hooks(model, hooks):
            bar = tqdm(total=len(order), desc="scoring", unit="q", disable=not progress,
                       leave=False)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                tokens, mask = pad_left([encoded[i].ids for i in idx], pad, device)
                logits = last_logits(model, tokens, mask).float()
                cand = torch.tensor([encoded[i].candidates for i in idx], device=logits.device)
                chosen = logits.gather(1, cand)
                probs[idx] = chosen.softmax(-1).cpu()
                bar.update(len(idx))
            bar.close()
    finally:
        model.train(was_training)
    if keys:
        score_cache.record(keys, probs)
    answers = torch.tensor([q.answer for q in questions], dtype=torch.long)
    settings = {"chat": chat, "prefix": prefix, "format": fmt or "per-question",
                "letter_ids": cfg.letter_ids}
    return EvalResult(probs=probs, preds=probs.argmax(-1), answers=answers, settings=settings)


@torch.no_grad()
def generate_greedy(
    model: HookedTransformer, prompts: Sequence[list[int]], *, max_new_tokens: int = 24,
    batch_size: int = 16, hooks: Sequence[Hook] | None = None, use_cache: bool = True,
) -> list[str]:
    """Greedy continuations of token-id prompts (left-padded batches, hooks applied).

    With `use_cache` each new token is one single-position forward against TransformerLens'
    key-value cache; without it the whole sequence is recomputed per token (the reference)."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    tokenizer = get_tokenizer(model)
    pad = pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    out: list[str] = []
    was_training = model.training
    model.eval()
    device = model.cfg.device
    try:
        with maybe_hooks(model, hooks):
            for start in range(0, len(prompts), batch_size):
                batch = [list(p) for p in prompts[start:start + batch_size]]
                new: list[list[int]] = [[] for _ in batch]
                done = [False] * len(batch)
                cache = (TransformerLensKeyValueCache.init_cache(model.cfg, device, len(batch))
                         if use_cache else None)
                tokens, mask = pad_left(batch, pad, device)
                for _ in range(max_new_tokens):
                    if cache is None:
                        tokens, mask = pad_left([p + n for p, n in zip(batch, new)], pad,
                                                device)
                    resid = model(tokens, attention_mask=mask, past_kv_cache=cache,
                                  stop_at_layer=model.cfg.n_layers)
                    logits = readout(model, resid[:, -1:])[:, 0]
                    nxt = logits.argmax(-1).tolist()
                    for i, t in enumerate(nxt):
                        if not done[i]:
                            new[i].append(t)
                            done[i] = t == eos
                    if all(done):
                        break
                    tokens = torch.tensor(nxt, device=device)[:, None]
                    mask = torch.ones_like(tokens)
                out += [tokenizer.decode([t for t in n if t != eos], skip_special_tokens=True)
                        for n in new]
    finally:
        model.train(was_training)
    return out
