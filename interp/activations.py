"""The one activation iterator: prompts through `run_with_cache` in left-padded batches.

`iter_activations(model, prompts, names, ...)` yields, batch by batch in the prompts' order, the
named hook points' activations at the counted positions ("last": each prompt's last token; "all":
every real token after the first `skip_first`; an int k: the last k positions), with the batch's
tokens and masks. Every forward-only reader of cached activations goes through it: the scorer's
last activations (`last_activations`), the logit lens, the difference-in-means
directions and the official recipe's token activations. Batches are padded by the one rule of
`interp.padding`.

A prompt is a question (the prompt the scorer reads: `interp.scoring.encode_all`, with `chat`,
`prefix`, `fmt` and `letter_ids` as there), a text (the tokenizer's ids) or token ids as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.data.questions import Question
from interp.errors import InterpError
from interp.padding import pad_id, pad_left

Prompt = Question | str | Sequence[int]
Positions = str | int  # "last", "all", or the last k positions


@dataclass
class Batch:
    """One batch of prompts through the model.

    rows: the prompts' indices in the input; tokens, mask: (b, p) left-padded ids and 1 on real
    tokens; keep: (b, p) the counted positions; acts: (names, t, d) each hook name's activation
    (as cached: the model's dtype and device) at the t counted positions, row by row and left to
    right within a row (`tokens[keep]` are their ids).
    """

    rows: range
    tokens: Int[Tensor, "b p"]
    mask: Int[Tensor, "b p"]
    keep: Bool[Tensor, "b p"]
    acts: Float[Tensor, "names t d"]

    @property
    def ids(self) -> Int[Tensor, "t"]:  # noqa: F821
        """The token id at each counted position."""
        return self.tokens[self.keep]


def encode_prompts(model: HookedTransformer, prompts: Sequence[Prompt], *, chat: bool = False,
                   prefix: str | None = None, fmt: str | None = None,
                   letter_ids: str | None = None) -> list[list[int]]:
    """Token ids of each prompt: a question's scored prompt (`encode_all`; longer than the
    model's context is an error), a text as the tokenizer encodes it, ids as they are."""
    from interp.model.load import get_tokenizer
    from interp.scoring import EvalConfig, encode_all, letter_rule

    questions = [p for p in prompts if isinstance(p, Question)]
    if questions:
        cfg = EvalConfig(chat=chat, prefix=prefix, format=fmt,
                         letter_ids=letter_rule(model, letter_ids))
        scored = iter([e.ids for e in encode_all(model, questions, cfg)])
    tok = get_tokenizer(model)
    return [next(scored) if isinstance(p, Question) else tok(p)["input_ids"]
            if isinstance(p, str) else list(p) for p in prompts]


def position_mask(mask: Int[Tensor, "b p"], positions: Positions = "last",
                  skip_first: int = 0) -> Bool[Tensor, "b p"]:
    """Which positions of a left-padded batch count: "last" the last token of each prompt;
    "all" each real token after the prompt's first `skip_first`; an int k the last k positions
    (all of them real when no prompt is shorter than k)."""
    if positions == "all":
        rank = mask.cumsum(-1)  # 1 at the first real token
        return mask.bool() & (rank > skip_first)
    if positions == "last":
        positions = 1
    if isinstance(positions, int) and not isinstance(positions, bool) and positions >= 1:
        keep = torch.zeros_like(mask, dtype=torch.bool)
        keep[:, -positions:] = True
        return keep
    raise InterpError(f"positions must be 'all', 'last' or a count of last positions, got "
                      f"{positions!r}")


@torch.no_grad()
def iter_activations(model: HookedTransformer, prompts: Sequence[Prompt], names: Sequence[str],
                     *, batch_size: int = 16, positions: Positions = "last",
                     skip_first: int = 0, chat: bool = False, prefix: str | None = None,
                     fmt: str | None = None, letter_ids: str | None = None) -> Iterator[Batch]:
    """Yield, per batch of `batch_size` prompts in their order, the activations of the hook
    points `names` at the counted positions (`position_mask`); see the module docstring. The
    cache is dropped before each batch is yielded; the model's mode is left as it is."""
    if batch_size < 1:
        raise InterpError(f"batch size must be at least 1, got {batch_size}")
    names = list(names)
    ids = encode_prompts(model, prompts, chat=chat, prefix=prefix, fmt=fmt,
                         letter_ids=letter_ids)
    pad = pad_id(model)
    for start in range(0, len(ids), batch_size):
        tokens, mask = pad_left(ids[start:start + batch_size], pad, model.cfg.device)
        _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names,
                                        return_type=None)
        keep = position_mask(mask, positions, skip_first)
        acts = torch.stack([cache[n][keep] for n in names])  # (names, t, d)
        del cache
        yield Batch(range(start, start + tokens.shape[0]), tokens, mask, keep, acts)


def last_activations(model: HookedTransformer, questions: Sequence[Question], *,
                     point: str = "resid_post", chat: bool = False, batch_size: int = 16
                     ) -> Float[Tensor, "n_layers n d_model"]:
    """Every layer's activation at `point` (a hook point such as "resid_post") at the last
    position of each question's prompt, as the scorer encodes it (`iter_activations`), float32
    on the CPU."""
    from interp.model.hooks import layer_hook_names

    names = layer_hook_names(model, point)
    batches = iter_activations(model, questions, names, batch_size=batch_size, chat=chat)
    return torch.cat([b.acts.float().cpu() for b in batches], dim=1)
