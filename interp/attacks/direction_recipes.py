"""The direction variants of the paper, and the official code's recipe for computing them.

Variants (each a per-layer direction table, `LayerDirections`):
- "models": mean(unlearned) - mean(original) on the same forget prompts (the paper's main one);
- "retain": mean(unlearned, forget prompts) - mean(unlearned, retain prompts) (the official
  code's MMLU variant);
- "unrelated": mean(unlearned, forget prompts) - mean(unlearned, unrelated texts) (wikitext);
- "pca": the first principal component of the standardized, stacked original and unlearned
  activations on the forget prompts (sign: along "models").

Two recipes compute them:
- "toolkit": the question stems, the first `skip_first` tokens skipped, outlier *positions*
  dropped per model and layer by the z-score of their L2 distance to the mean (`robust_mean`);
- "official" (`ethz-spylab/unlearning-vs-safety`, src/orthogonalization): the prompt the scorer
  reads (header, question, choices, "Answer:"), the first 40 tokens skipped for the forget
  prompts; one list of outlier *token strings*, found once on the first 1,000 tokens of the
  original model's forget activations and of the unlearned model's retain activations (per layer:
  mean L1 distance of each token to the others, z-score > 3; union over layers), removed from
  every set before the means; the unrelated texts as many as the forget prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.activations import iter_activations
from interp.data.questions import Question
from interp.errors import InterpError
from interp.model.hooks import layer_hook_names
from interp.model.load import get_tokenizer
from interp.scoring import EvalConfig, encode_all

VARIANTS = ("models", "retain", "unrelated", "pca")
RECIPES = ("toolkit", "official")


@dataclass
class OfficialRecipe:
    """The official recipe's knobs (names distinct from `DirectionsConfig`'s, which this recipe
    does not read: its own skip, outlier rule and batch size apply)."""

    forget_skip: int = 40  # tokens skipped at the start of each forget prompt (official: 40)
    outlier_tokens: int = 1000  # tokens of each set the outlier list is found on
    outlier_zscore: float = 3.0
    pca_limit: int = 2500  # tokens per model stacked for the PCA
    pass_batch: int = 8  # prompts per forward pass


def check_variants(variants: Sequence[str]) -> tuple[str, ...]:
    """`variants` as a tuple; an `InterpError` if it is empty or names an unknown variant."""
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise InterpError(f"unknown direction variant(s) {bad or variants!r}; use some of "
                          f"{list(VARIANTS)}")
    return tuple(variants)


def scored_ids(model: HookedTransformer, questions: Sequence[Question]) -> list[list[int]]:
    """The ids the scorer reads for each question (raw mode, the questions' own format)."""
    return [e.ids for e in encode_all(model, questions, EvalConfig())]


@torch.no_grad()
def token_activations(model: HookedTransformer, prompts: list[list[int]], skip: int,
                      hook: str = "resid_post", batch_size: int = 8
                      ) -> Iterator[tuple[Float[Tensor, "n_layers t d"], list[int]]]:
    """Per batch: the hook's activations at every layer for the counted tokens (the first
    `skip` of each prompt left out), float32 on the model's device, and those tokens' ids."""
    for batch in iter_activations(model, prompts, layer_hook_names(model, hook),
                                  batch_size=batch_size, positions="all", skip_first=skip):
        yield batch.acts.float(), batch.ids.tolist()


def first_tokens(stream, limit: int) -> tuple[Tensor, list[int]]:
    """The first `limit` counted tokens of a stream: (n_layers, limit, d) and their ids."""
    acts, ids, n = [], [], 0
    for a, i in stream:
        take = min(limit - n, a.shape[1])
        acts.append(a[:, :take].cpu())
        ids += i[:take]
        n += take
        if n >= limit:
            break
    if not acts:
        raise InterpError("no tokens left after skipping the first ones; give longer prompts")
    return torch.cat(acts, dim=1), ids


def outlier_strings(acts: Float[Tensor, "n_layers t d"], ids: list[int], tokenizer,
                    z: float) -> set[str]:
    """Token strings whose mean L1 distance to the other tokens is more than `z` standard
    deviations above the mean, at any layer (the official rule)."""
    out: set[str] = set()
    for layer in range(acts.shape[0]):
        a = acts[layer].double()
        mean_dist = torch.cdist(a, a, p=1).mean(dim=0)
        score = (mean_dist - mean_dist.mean()) / mean_dist.std()
        out |= {tokenizer.decode([ids[i]]) for i in torch.nonzero(score > z)[:, 0].tolist()}
    return out


def filtered_mean(stream, banned: set[int], limit_keep: int = 0
                  ) -> tuple[Float[Tensor, "n_layers d"], Tensor | None]:
    """Float64 mean over the tokens whose id is not banned; with `limit_keep`, also the first
    that many kept activations (n_layers, k, d) for the PCA."""
    total, count, kept, n_kept = None, 0, [], 0
    for acts, ids in stream:
        ok = torch.tensor([i not in banned for i in ids], dtype=torch.bool, device=acts.device)
        a = acts[:, ok].double()
        s = a.sum(1)
        total = s if total is None else total + s
        count += int(ok.sum())
        if n_kept < limit_keep:
            take = a[:, : limit_keep - n_kept].float().cpu()
            kept.append(take)
            n_kept += take.shape[1]
    if total is None or count == 0:
        raise InterpError("no tokens left to average after removing the outlier tokens")
    return total / count, (torch.cat(kept, dim=1) if kept else None)


def paired_pca(original: Float[Tensor, "n_layers t d"], unlearned: Float[Tensor, "n_layers t d"],
               along: Float[Tensor, "n_layers d"]) -> Float[Tensor, "n_layers d"]:
    """Per layer, the first principal component of the standardized stack of both models'
    activations (the official code's PCA variant), signed along `along`."""
    out = []
    for layer in range(original.shape[0]):
        x = torch.cat([original[layer], unlearned[layer]]).double()
        std = x.std(dim=0, unbiased=False)
        x = (x - x.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        top = vh[0]
        if torch.dot(top, along[layer].double().to(top.device)) < 0:
            top = -top
        out.append(top)
    return torch.stack(out)


@torch.no_grad()
def official_means(model: HookedTransformer, original: HookedTransformer,
                   forget: Sequence[Question], retain: Sequence[Question],
                   unrelated: Sequence[str], cfg: OfficialRecipe, want_pca: bool) -> dict:
    """The official recipe's means (float64, (n_layers, d)) of: "original" and "unlearned" on
    the forget prompts, "retain" and "unrelated" on the unlearned model; "outliers": the banned
    token strings; with `want_pca`, "pca_original" / "pca_unlearned" token activations."""
    tok = get_tokenizer(model)
    f_ids = scored_ids(model, forget)
    r_ids = scored_ids(model, retain)
    u_ids = [tok(t)["input_ids"] for t in list(unrelated)[: len(forget)]]
    bs = cfg.pass_batch

    a_f, i_f = first_tokens(token_activations(original, f_ids, cfg.forget_skip, batch_size=bs),
                            cfg.outlier_tokens)
    a_r, i_r = first_tokens(token_activations(model, r_ids, 0, batch_size=bs),
                            cfg.outlier_tokens)
    strings = outlier_strings(a_f, i_f, tok, cfg.outlier_zscore) | outlier_strings(
        a_r, i_r, tok, cfg.outlier_zscore)
    del a_f, a_r
    # every id whose string is banned, not only those seen in the first tokens
    banned = {i for i in range(min(len(tok), model.cfg.d_vocab)) if tok.decode([i]) in strings}
    keep = cfg.pca_limit if want_pca else 0
    m_orig, p_orig = filtered_mean(token_activations(original, f_ids, cfg.forget_skip,
                                                     batch_size=bs), banned, keep)
    m_unl, p_unl = filtered_mean(token_activations(model, f_ids, cfg.forget_skip, batch_size=bs),
                                 banned, keep)
    out = {"original": m_orig, "unlearned": m_unl, "outliers": sorted(strings),
           "retain": filtered_mean(token_activations(model, r_ids, 0, batch_size=bs),
                                   banned)[0]}
    if u_ids:
        out["unrelated"] = filtered_mean(token_activations(model, u_ids, 0, batch_size=bs),
                                         banned)[0]
    if want_pca:
        out["pca_original"], out["pca_unlearned"] = p_orig, p_unl
    return out
