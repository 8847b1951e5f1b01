"""Logit lens: read the four candidates' probabilities off every layer.

For every layer, at the last position, the residual stream after the block (and the attention
and MLP outputs on their own) goes through the final norm and the unembedding; softmax over the
whole vocabulary; P(candidate) for the four candidates, their total mass, and the accuracy of the
argmax among them. The last layer's `resid_post` lens is the model's own output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.data.questions import Question
from interp.evaluate import EvalConfig, encode_all, pad_left
from interp.models import get_tokenizer

COMPONENTS = {"resid_post": "hook_resid_post", "attn_out": "hook_attn_out",
              "mlp_out": "hook_mlp_out"}


@dataclass
class LensConfig:
    components: tuple[str, ...] = ("resid_post", "attn_out", "mlp_out")
    chat: bool = False
    batch_size: int = 16


@dataclass
class LensResult:
    """probs: component -> (n_layers, n_questions, 4) full-vocabulary probabilities of the four
    candidates; answers: (n_questions,)."""

    probs: dict[str, Float[Tensor, "n_layers n 4"]]
    answers: Int[Tensor, "n"]  # noqa: F821
    chat: bool = False
    meta: dict = field(default_factory=dict)

    def accuracy(self, component: str = "resid_post") -> list[float]:
        preds = self.probs[component].argmax(-1)  # (layers, n)
        return (preds == self.answers[None]).double().mean(-1).tolist()

    def mass(self, component: str = "resid_post") -> list[float]:
        return self.probs[component].sum(-1).mean(-1).tolist()

    def best_layer(self, component: str = "resid_post") -> tuple[int, float]:
        acc = self.accuracy(component)
        layer = max(range(len(acc)), key=lambda i: acc[i])
        return layer, acc[layer]

    def to_json(self) -> dict:
        return {"chat": self.chat, "n": int(self.answers.shape[0]),
                "components": {c: {"accuracy": self.accuracy(c), "mass": self.mass(c)}
                               for c in self.probs}}


@torch.no_grad()
def logit_lens(model: HookedTransformer, questions: Sequence[Question],
               cfg: LensConfig | None = None) -> LensResult:
    cfg = cfg or LensConfig()
    encoded = encode_all(model, questions, EvalConfig(chat=cfg.chat))
    names = {c: [f"blocks.{i}.{COMPONENTS[c]}" for i in range(model.cfg.n_layers)]
             for c in cfg.components}
    all_names = [n for ns in names.values() for n in ns]
    pad_id = get_tokenizer(model).pad_token_id or 0
    out = {c: torch.empty((model.cfg.n_layers, len(encoded), 4)) for c in cfg.components}
    for start in range(0, len(encoded), cfg.batch_size):
        chunk = encoded[start:start + cfg.batch_size]
        tokens, mask = pad_left([e.ids for e in chunk], pad_id, model.cfg.device)
        _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=all_names,
                                        return_type=None)
        cand = torch.tensor([e.candidates for e in chunk], device=tokens.device)
        for comp, layer_names in names.items():
            last = torch.stack([cache[n][:, -1, :] for n in layer_names])  # (L, b, d)
            logits = model.unembed(model.ln_final(last))  # (L, b, vocab)
            probs = logits.float().softmax(-1)
            picked = probs.gather(-1, cand[None].expand(probs.shape[0], -1, -1))
            out[comp][:, start:start + len(chunk)] = picked.cpu()
        del cache
    answers = torch.tensor([q.answer for q in questions])
    return LensResult(out, answers, chat=cfg.chat)
