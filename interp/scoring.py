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
    eos_check_every: int = 8,
) -> list[str]:
    """Greedy continuations of token-id prompts (left-padded batches, hooks applied).

    With `use_cache` each new token is one single-position forward against TransformerLens'
    key-value cache; without it the whole sequence is recomputed per token (the reference).

    The generated ids stay on the model's device (one preallocated tensor per batch) and are read
    back once per batch, to decode. A row's text ends at its first end-of-sequence token; the batch
    stops once every row has one, which the cached path checks (a host read) only every
    `eos_check_every` tokens: the few extra forwards after the last row ends are ignored, so the
    texts are the same as checking every token, and no read stalls the device between tokens. The
    recomputing path reads one number per token anyway (the next input's width, since a finished
    row stops growing) and checks then."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    if eos_check_every < 1:
        raise InterpError(f"eos_check_every must be at least 1, got {eos_check_every}")
    tokenizer = get_tokenizer(model)
    pad = pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    out: list[str] = []
    was_training = model.training
    model.eval()
    device = model.cfg.device
    n_ctx = model.cfg.n_ctx
    try:
        with maybe_hooks(model, hooks):
            for start in range(0, len(prompts), batch_size):
                batch = [list(p) for p in prompts[start:start + batch_size]]
                rows = len(batch)
                cache = (TransformerLensKeyValueCache.init_cache(model.cfg, device, rows)
                         if use_cache else None)
                tokens, mask = pad_left(batch, pad, device)
                width = tokens.shape[1]  # the prompts' padded width
                new = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=device)
                done = torch.zeros(rows, dtype=torch.bool, device=device)
                if cache is None:
                    prompt_tokens, prompt_len = tokens, mask.sum(1)
                    n_new = torch.zeros(rows, dtype=torch.long, device=device)  # kept per row
                steps = 0
                for step in range(max_new_tokens):
                    resid = model(tokens, attention_mask=mask, past_kv_cache=cache,
                                  stop_at_layer=model.cfg.n_layers)
                    logits = readout(model, resid[:, -1:])[:, 0]
                    nxt = logits.argmax(-1)
                    new[:, step] = nxt
                    steps = step + 1
                    if cache is None:
                        # rows that had not ended keep this token; those that had do not grow
                        n_new += ~done
                    if eos is not None:
                        done |= nxt == eos
                    if steps == max_new_tokens:
                        break
                    if cache is None:
                        # every row's prompt and kept tokens, left-padded as `pad_left` does;
                        # the width is a shape, so it is read here, with the all-ended check
                        lengths = prompt_len + n_new
                        if eos is None:  # no row ends: every row grew by one
                            w = width + steps
                        else:
                            w, ended = torch.stack([lengths.max(), done.all().long()]).tolist()
                            if ended:
                                break
                        seq = torch.cat([prompt_tokens, new[:, :steps]], 1)
                        cols = torch.arange(w, device=device)
                        src = (width + n_new - w)[:, None] + cols  # kept tokens end the row
                        real = cols[None] >= (w - lengths)[:, None]
                        tokens = torch.where(real, seq.gather(1, src.clamp(min=0)), pad)
                        mask = real.long()
                    else:
                        if eos is not None and (steps % eos_check_every == 0
                                                or width + steps >= n_ctx) and bool(done.all()):
                            break
                        tokens = nxt[:, None]
                        mask = torch.ones_like(tokens)
                for ids in new[:, :steps].tolist():  # the batch's one read of its ids
                    if eos in ids:
                        ids = ids[:ids.index(eos)]
                    out.append(tokenizer.decode(ids, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out
