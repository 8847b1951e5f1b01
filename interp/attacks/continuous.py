"""The loop the continuous-space attacks share (`interp.attacks.soft_prompt`,
`interp.attacks.latent`): questions encoded once as left-padded token rows, a free tensor put into
the forward pass by a hook, the four candidates' cross-entropy at the last position, and scores
under that tensor in the scorer's form (`EvalResult`) so `QuestionSets` reads them like any other.

A row may hold `slot` positions (the soft prompt's n free input vectors, where a GCG prefix goes:
`interp.attacks.gcg_tokens.question_slots`); without slots a row is the scorer's own prompt
(`interp.scoring.encode_all`), so a zero edit scores exactly as `evaluate` does.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.data.questions import Question
from interp.errors import InterpError
from interp.model.hooks import readout
from interp.model.state import get_tokenizer
from interp.padding import pad_id, pad_left
from interp.scoring import EvalConfig, EvalResult, encode_all, letter_rule

# (rows of one batch, that batch) -> the forward hooks that put the free tensor in
HookMaker = Callable[["Rows"], list]


@dataclass
class Rows:
    """Questions as left-padded rows: tokens and mask (b, p), the slot positions (b, n; n may be
    0), the four candidates' ids (b, 4) and the targets (b,): the answers, or shuffled ones."""

    tokens: Int[Tensor, "b p"]
    mask: Int[Tensor, "b p"]
    slot: Int[Tensor, "b n"]
    candidates: Int[Tensor, "b 4"]
    targets: Int[Tensor, "b"]  # noqa: F821

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def take(self, idx: Sequence[int]) -> "Rows":
        """The rows `idx`, re-padded to their own longest (fewer pad columns)."""
        i = torch.as_tensor(list(idx), dtype=torch.long)
        keep = int(self.mask[i].sum(-1).max())
        cut = self.tokens.shape[1] - keep
        return Rows(self.tokens[i, cut:], self.mask[i, cut:], self.slot[i] - cut,
                    self.candidates[i], self.targets[i])


def encode_rows(model: HookedTransformer, questions: Sequence[Question], n_slots: int = 0, *,
                chat: bool = False, targets: Sequence[int] | None = None) -> Rows:
    """`questions` as rows: the scorer's prompts, or with `n_slots` free positions where a prefix
    goes (their ids are the pad id; a hook writes them)."""
    from interp.attacks.gcg_tokens import question_slots

    if not questions:
        raise InterpError("no questions to encode")
    device = model.cfg.device
    cfg = EvalConfig(chat=chat, letter_ids=letter_rule(model))
    encoded = encode_all(model, questions, cfg)
    pad = pad_id(model)
    if n_slots:
        tok = get_tokenizer(model)
        parts = [question_slots(tok, q, chat=chat, fmt=None, letter_ids=cfg.letter_ids)
                 for q in questions]
        seqs = [s.before + [pad] * n_slots + s.after for s in parts]
        starts = [len(s.before) for s in parts]
    else:
        seqs, starts = [e.ids for e in encoded], [0] * len(encoded)
    tokens, mask = pad_left(seqs, pad, device)
    width = tokens.shape[1]
    first = torch.tensor([width - len(s) + st for s, st in zip(seqs, starts)], device=device)
    slot = first[:, None] + torch.arange(n_slots, device=device)[None]
    cand = torch.tensor([e.candidates for e in encoded], device=device)
    tgt = torch.tensor(list(targets) if targets is not None else [q.answer for q in questions],
                       device=device)
    return Rows(tokens, mask, slot, cand, tgt)


def shuffled_targets(questions: Sequence[Question], seed: int) -> list[int]:
    """The placebo's targets: the answer positions permuted across questions (each question's
    target is another question's answer position, right by chance only)."""
    answers = [q.answer for q in questions]
    random.Random(seed).shuffle(answers)
    return answers


def candidate_logits(model: HookedTransformer, rows: Rows, hooks: list
                     ) -> Float[Tensor, "b 4"]:
    """The four candidates' logits at each row's last position, with `hooks` on."""
    with model.hooks(fwd_hooks=hooks):
        resid = model(rows.tokens, attention_mask=rows.mask, stop_at_layer=model.cfg.n_layers)
    last = readout(model, resid[:, -1:])[:, 0]
    if last.dtype != torch.float64:  # float32 at least (a float64 model keeps its precision)
        last = last.float()
    return last.gather(1, rows.candidates)


def candidate_loss(model: HookedTransformer, rows: Rows, hooks: list) -> Tensor:
    """Mean cross-entropy of the targets over the four candidates."""
    return F.cross_entropy(candidate_logits(model, rows, hooks), rows.targets)


@torch.no_grad()
def score_rows(model: HookedTransformer, rows: Rows, make_hooks: HookMaker,
               batch_size: int = 32) -> EvalResult:
    """The scorer's result for `rows` under the hooks `make_hooks` gives each batch."""
    probs = []
    was = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            part = rows.take(range(start, min(start + batch_size, len(rows))))
            probs.append(candidate_logits(model, part, make_hooks(part)).float().softmax(-1)
                         .cpu())
    finally:
        model.train(was)
    p = torch.cat(probs)
    return EvalResult(probs=p, preds=p.argmax(-1), answers=rows.targets.cpu(),
                      settings={"edit": "continuous"})


def scorer(model: HookedTransformer, make_hooks: HookMaker, n_slots: int = 0, *,
           chat: bool = False, batch_size: int = 32):
    """A `Scorer` (questions -> `EvalResult`) under the edit `make_hooks` puts in."""
    return lambda qs: score_rows(model, encode_rows(model, qs, n_slots, chat=chat), make_hooks,
                                 batch_size)


@contextmanager
def frozen(model: HookedTransformer) -> Iterator[None]:
    """The model's parameters without gradients for the duration (restored after)."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def minibatches(n: int, size: int, seed: int) -> Iterator[list[int]]:
    """Endless shuffled minibatches of range(n) (each epoch a new order)."""
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for start in range(0, n, size):
            yield order[start:start + size]
