"""Where a GCG prefix goes and which tokens it may use: a question split around the prefix
(`question_slots`, tokenized as the scorer tokenizes the whole text), the allowed tokens, and
the decode -> re-encode round trip every candidate must survive."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from interp.data.questions import Question
from interp.errors import InterpError
from interp.prompts import chat_text, cloze_prompt, encode_question, letter_prompt, shared_prefix

MARK = "\ue000PREFIX\ue000"


@dataclass
class Slots:
    """One question split around the prefix: ids before it, after it, and the target token."""

    before: list[int]
    after: list[int]
    target: int


PLACEHOLDER = "x"  # stands for the prefix when the text after it is tokenized in context


def question_slots(tokenizer, q: Question, *, chat: bool, fmt: str | None,
                   letter_ids: str = "in-context") -> Slots:
    """The ids before and after the prefix, each as the whole text tokenizes them: the text after
    the prefix is tokenized behind a placeholder word and cut where the placeholder's own ids end
    (alone, " The following ..." gains a leading "▁" under SentencePiece that the scorer never
    sees)."""
    fmt = fmt or q.format
    body = letter_prompt(q) if fmt == "letter" else cloze_prompt(q)
    text = f"{MARK} {body}"
    context = chat_text(tokenizer, text) if chat else text
    if context.count(MARK) != 1:
        raise InterpError("the chat template moved the prefix marker; GCG cannot place a prefix")
    before, after = context.split(MARK)
    before_ids = tokenizer(before, add_special_tokens=not chat)["input_ids"]
    head = tokenizer(PLACEHOLDER, add_special_tokens=False)["input_ids"]
    joint = tokenizer(PLACEHOLDER + after, add_special_tokens=False)["input_ids"]
    after_ids = joint[shared_prefix(head, joint):]
    target = encode_question(tokenizer, q, chat=chat, fmt=fmt,
                             letter_ids=letter_ids).candidates[q.answer]
    return Slots(before_ids, after_ids, target)


_ALLOWED: dict[str, Tensor] = {}


def _tokenizer_key(tokenizer, vocab: int, allow_non_ascii: bool) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    blob = backend.to_str() + repr((sorted(tokenizer.all_special_ids or []),
                                    type(tokenizer).__name__,
                                    getattr(tokenizer, "clean_up_tokenization_spaces", None)))
    return f"{hashlib.sha1(blob.encode()).hexdigest()}:{vocab}:{allow_non_ascii}"


def allowed_tokens(tokenizer, vocab: int, allow_non_ascii: bool) -> Tensor:
    """Tokens a prefix may use: not special, printable (ASCII unless allowed), round-tripping.
    Computed once per tokenizer (its full serialization, hashed) in a process."""
    key = _tokenizer_key(tokenizer, vocab, allow_non_ascii)
    if key is not None and key in _ALLOWED:
        return _ALLOWED[key].clone()
    ok = _allowed_tokens(tokenizer, vocab, allow_non_ascii)
    if key is not None:
        _ALLOWED[key] = ok.clone()
    return ok


def _allowed_tokens(tokenizer, vocab: int, allow_non_ascii: bool) -> Tensor:
    ok = torch.zeros(vocab, dtype=torch.bool)
    special = set(tokenizer.all_special_ids or [])
    for i in range(min(vocab, len(tokenizer))):
        if i in special:
            continue
        piece = tokenizer.decode([i])
        if not piece or not piece.strip():
            continue
        if not allow_non_ascii and not (piece.isascii() and piece.isprintable()):
            continue
        if tokenizer(piece, add_special_tokens=False)["input_ids"] != [i]:
            continue
        ok[i] = True
    if not ok.any():
        raise InterpError("no token survives decode -> re-encode; GCG has nothing to propose")
    return ok


def round_trips(tokenizer, ids: Sequence[int]) -> bool:
    """Whether decoding `ids` and encoding the text again gives the same ids."""
    text = tokenizer.decode(list(ids))
    return tokenizer(text, add_special_tokens=False)["input_ids"] == list(ids)


def sample_candidates(prefix: Tensor, grad: Tensor, allowed: Tensor, cfg,
                      gen: torch.Generator, k: int | None = None) -> Tensor:
    """`search_width` prefixes, each with `n_replace` positions set to top-k gradient tokens
    (`cfg`: the GCG config's `topk`, `search_width`, `n_replace`), on the gradient's device. The
    positions and choices are drawn from `gen` (a CPU generator, so a seed gives the same draws
    on any device) and sent over without waiting for the device; `k`: the number of top tokens
    per position, min(topk, allowed tokens) (computed here, with a host read, when not given)."""
    device = grad.device
    n = prefix.shape[0]
    allowed = allowed.to(device)  # run_gcg passes it on the device already: no copy
    scores = (-grad.float()).masked_fill(~allowed, float("-inf"))
    if k is None:
        k = min(cfg.topk, int(allowed.sum()))
    top = scores.topk(k, dim=-1).indices  # (n, k)
    width = cfg.search_width
    n_rep = min(cfg.n_replace, n)
    pos = torch.argsort(torch.rand(width, n, generator=gen), dim=-1)[:, :n_rep]  # (w, r)
    choice = torch.randint(0, k, (width, n_rep), generator=gen)
    pos = pos.to(device, non_blocking=True)
    choice = choice.to(device, non_blocking=True)
    new = top[pos, choice]
    cands = prefix.to(device)[None].repeat(width, 1)
    cands.scatter_(1, pos, new)
    return cands
