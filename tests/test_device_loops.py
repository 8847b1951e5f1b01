"""Inner loops that stay on the device: GCG's search step (candidates, their losses, the argmin
and the buffer of best prefixes as device tensors) and greedy generation (ids kept on the device,
decoded once per batch). On the CPU they must give exactly what the host-list code gave: the
references below are that code, copied as it was before the rewrite (the objective, the candidate
sampler, the search loop and `generate_greedy`). Host reads (`tolist`, `item`, `bool(...)`, ...) are
counted by patching `torch.Tensor`: a bounded number per step, whatever the number of batches."""

from __future__ import annotations

import collections
from contextlib import contextmanager
from typing import Sequence

import einops
import pytest
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp import scoring
from interp.activations import iter_activations
from interp.attacks.gcg import (
    GCGConfig,
    Objective,
    allowed_tokens,
    initial_prefix,
    question_slots,
    round_trips,
    run_gcg,
    sample_candidates,
)
from interp.data.questions import Question
from interp.errors import InterpError
from interp.model.hooks import EMBED_HOOK, hook_name, readout
from interp.model.load import get_tokenizer
from interp.padding import pad_id, pad_left
from interp.training import fixed_threads

from .conftest import WMDP_ROWS


# ------------------------------------------------------- references: the code before the rewrite
class _RefObjective:
    """The objective before the device rewrite, verbatim: rows built as host lists."""

    def __init__(self, model: HookedTransformer, slots, cfg,
                 original: HookedTransformer | None = None) -> None:
        self.model, self.slots, self.cfg = model, slots, cfg
        self.device = model.cfg.device
        self.pad = pad_id(model)
        self.tail = min(len(s.after) for s in slots)  # question tokens aligned at the end
        self.layers = list(cfg.resid_layers) if cfg.objective == "enhanced" else []
        if cfg.objective not in ("plain", "enhanced"):
            raise InterpError(f"GCG objective must be 'plain' or 'enhanced', got {cfg.objective!r}")
        if self.layers and original is None:
            raise InterpError("the enhanced GCG objective needs the original model")
        bad = [x for x in self.layers if not 0 <= x < model.cfg.n_layers]
        if bad:
            raise InterpError(f"resid layers {bad} out of range 0..{model.cfg.n_layers - 1}")
        self.reference = self._reference(original) if self.layers else None
        before = slots[0].before
        self.shared = (cfg.reuse_before and len(before) > 0
                       and all(s.before == before for s in slots))
        self._before_cache = None

    @torch.no_grad()
    def _context(self, rows: int):
        """The keys and values of the shared text before the prefix, for `rows` rows (computed
        once; a frozen cache, so each forward reads it and appends nothing)."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        model = self.model
        if self._before_cache is None:
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, self.device, 1)
            before = torch.tensor([self.slots[0].before], device=self.device)
            model(before, attention_mask=torch.ones_like(before), past_kv_cache=cache,
                  return_type=None)
            self._before_cache = cache
        done = self._before_cache
        out = TransformerLensKeyValueCache.init_cache(model.cfg, self.device, rows)
        for mine, theirs in zip(out.entries, done.entries):
            mine.past_keys = theirs.past_keys.expand(rows, -1, -1, -1)
            mine.past_values = theirs.past_values.expand(rows, -1, -1, -1)
        out.previous_attention_mask = done.previous_attention_mask.expand(rows, -1)
        out.freeze()
        return out

    @torch.no_grad()
    def _reference(self, original: HookedTransformer) -> Tensor:
        """Original model, no prefix: residuals of the last `tail` tokens, (q, layers, tail, d)."""
        seqs = [s.before + s.after for s in self.slots]
        names = [hook_name(i) for i in self.layers]
        (batch,) = iter_activations(original, seqs, names, batch_size=len(seqs),
                                    positions=self.tail)  # one batch: every question
        ref = einops.rearrange(batch.acts, "l (q t) d -> q l t d", q=len(seqs))
        return ref.contiguous().to(self.device)

    def _rows(self, prefixes: Int[Tensor, "c n"], qs: Sequence[int]):
        pref = prefixes.tolist()
        seqs, starts = [], []
        for p in pref:
            for q in qs:
                s = self.slots[q]
                before = [] if self.shared else s.before  # shared: read from the cache
                seqs.append(before + p + s.after)
                starts.append(len(before))
        return seqs, starts

    def _forward(self, tokens, mask, prefix_pos, qs: Sequence[int], n_prefix: int,
                 embed_hook=None, lengths=None) -> Float[Tensor, "rows"]:  # noqa: F821
        """Loss per row. Left-padded rows (`lengths` None) end at the last position; with the
        shared context cached, rows are right-padded and end at `lengths - 1`."""
        model, cfg = self.model, self.cfg
        names = [hook_name(i) for i in self.layers]
        store: dict[str, Tensor] = {}
        rows = torch.arange(tokens.shape[0], device=self.device)
        if lengths is not None:
            tail_idx = lengths[:, None] - self.tail + torch.arange(self.tail, device=self.device)

        def keep(x, hook):
            store[hook.name] = (x[:, -self.tail:] if lengths is None
                                else x[rows[:, None], tail_idx])

        hooks = [(n, keep) for n in names]
        if embed_hook is not None:
            hooks.append((EMBED_HOOK, embed_hook))
        cache = self._context(tokens.shape[0]) if self.shared else None
        with model.hooks(fwd_hooks=hooks):
            resid = model(tokens, attention_mask=mask, past_kv_cache=cache,
                          stop_at_layer=model.cfg.n_layers)
        targets = torch.tensor([self.slots[q].target for q in qs], device=self.device)
        end = resid[:, -1:] if lengths is None else resid[rows, lengths - 1][:, None]
        last = readout(model, end)[:, 0]
        loss = F.cross_entropy(last.float(), targets, reduction="none")
        if self.layers:
            got = torch.stack([store[n] for n in names], 1)  # (rows, layers, tail, d)
            ref = self.reference[list(qs)]
            dist = ((got - ref) ** 2).sum(-1).mean((-1, -2))
            loss = loss + cfg.resid_weight * dist / (ref**2).sum(-1).mean((-1, -2))
        if cfg.fluency_weight > 0 and n_prefix > 1:
            rows = torch.arange(tokens.shape[0], device=self.device)[:, None]
            pos = prefix_pos[:, None] + torch.arange(n_prefix - 1, device=self.device)[None]
            logits = readout(model, resid[rows, pos])  # (rows, n-1, vocab)
            nxt = tokens[rows, pos + 1]
            nll = F.cross_entropy(logits.float().flatten(0, 1), nxt.flatten(), reduction="none")
            loss = loss + cfg.fluency_weight * nll.view(len(qs), -1).mean(-1)
        return loss

    def _batch(self, seqs, starts):
        """(tokens, mask, prefix positions, lengths): left-padded, or right-padded after the
        shared cached context (pads then follow every real token, so causal attention never
        reads them, and the mask is all ones; `lengths` locates each row's end)."""
        if self.shared:
            width = max(len(s) for s in seqs)
            tokens = torch.full((len(seqs), width), self.pad, dtype=torch.long)
            for i, seq in enumerate(seqs):
                tokens[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            lengths = torch.tensor([len(s) for s in seqs], device=self.device)
            pos = torch.tensor(starts, device=self.device)
            tokens = tokens.to(self.device)
            return tokens, torch.ones_like(tokens), pos, lengths
        tokens, mask = pad_left(seqs, self.pad, self.device)
        width = tokens.shape[1]
        pos = torch.tensor([width - len(s) + st for s, st in zip(seqs, starts)], device=self.device)
        return tokens, mask, pos, None

    @torch.no_grad()
    def losses(self, prefixes: Int[Tensor, "c n"]) -> Float[Tensor, "c"]:  # noqa: F821
        """Mean loss over every question, for each candidate prefix."""
        nq = len(self.slots)
        out = []
        per_batch = max(1, self.cfg.candidate_batch // nq)
        for start in range(0, prefixes.shape[0], per_batch):
            chunk = prefixes[start:start + per_batch]
            seqs, starts = self._rows(chunk, range(nq))
            tokens, mask, pos, lengths = self._batch(seqs, starts)
            qs = list(range(nq)) * chunk.shape[0]
            loss = self._forward(tokens, mask, pos, qs, chunk.shape[1], lengths=lengths)
            out.append(loss.view(chunk.shape[0], nq).mean(-1))
        return torch.cat(out)

    @fixed_threads()  # gradients: repeatable whatever the caller's thread count
    def token_gradient(self, prefix: Int[Tensor, "n"]) -> Float[Tensor, "n vocab"]:  # noqa: F821
        """d loss / d one-hot(prefix), through the embedding matrix."""
        model = self.model
        w_e = model.embed.W_E
        one_hot = F.one_hot(prefix, w_e.shape[0]).to(w_e.dtype).requires_grad_(True)
        nq = len(self.slots)
        seqs, starts = self._rows(prefix[None], range(nq))
        tokens, mask, pos, lengths = self._batch(seqs, starts)
        n = prefix.shape[0]
        idx = pos[:, None] + torch.arange(n, device=self.device)[None]

        def swap_in(x, hook):
            emb = (one_hot @ w_e)[None].expand(x.shape[0], -1, -1)
            rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(idx)
            return x.index_put((rows, idx), emb.to(x.dtype))

        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            loss = self._forward(tokens, mask, pos, list(range(nq)), n, embed_hook=swap_in,
                                 lengths=lengths).mean()
            (grad,) = torch.autograd.grad(loss, one_hot)
        finally:
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)
        return grad


def _ref_sample_candidates(prefix: Tensor, grad: Tensor, allowed: Tensor, cfg: GCGConfig,
                           gen: torch.Generator) -> Tensor:
    n = prefix.shape[0]
    scores = (-grad.float()).masked_fill(~allowed.to(grad.device), float("-inf"))
    k = min(cfg.topk, int(allowed.sum()))
    top = scores.topk(k, dim=-1).indices.cpu()  # (n, k)
    width = cfg.search_width
    n_rep = min(cfg.n_replace, n)
    pos = torch.argsort(torch.rand(width, n, generator=gen), dim=-1)[:, :n_rep]  # (w, r)
    choice = torch.randint(0, k, (width, n_rep), generator=gen)
    new = top[pos, choice]
    cands = prefix.cpu()[None].repeat(width, 1)
    cands.scatter_(1, pos, new)
    return cands


def _ref_run_gcg(model, train, cfg: GCGConfig, original=None):
    """The old search loop (no held-out scores): (best prefix ids, best loss per step,
    candidates scored)."""
    tok = get_tokenizer(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    rule = scoring.letter_rule(model)
    slots = [question_slots(tok, q, chat=cfg.chat, fmt=cfg.fmt, letter_ids=rule) for q in train]
    objective = _RefObjective(model, slots, cfg, original)
    allowed = allowed_tokens(tok, model.cfg.d_vocab, cfg.allow_non_ascii)
    current = torch.tensor(initial_prefix(tok, cfg, allowed), dtype=torch.long)
    model.eval()
    buffer = [(float(objective.losses(current[None].to(model.cfg.device))[0]), current)]
    losses_per_step, scored = [], 0
    for _ in range(cfg.steps):
        best_loss, best = min(buffer, key=lambda b: b[0])
        grad = objective.token_gradient(best.to(model.cfg.device))
        cands = _ref_sample_candidates(best, grad, allowed, cfg, gen)
        keep = [i for i, c in enumerate(cands.tolist()) if round_trips(tok, c)]
        if keep:
            cands = cands[keep]
            losses = objective.losses(cands.to(model.cfg.device)).cpu()
            scored += cands.shape[0]
            i = int(losses.argmin())
            buffer.append((float(losses[i]), cands[i]))
            buffer = sorted(buffer, key=lambda b: b[0])[: cfg.buffer_size]
        losses_per_step.append(min(b[0] for b in buffer))
    best = min(buffer, key=lambda b: b[0])[1]
    return best.tolist(), losses_per_step, scored


@torch.no_grad()
def _ref_generate_greedy(model, tokenizer, prompts, *, max_new_tokens=24, batch_size=16,
                         use_cache=True):
    """The old `generate_greedy` (one `.tolist()` per token), with the tokenizer passed in."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    pad = pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    out = []
    model.eval()
    device = model.cfg.device
    for start in range(0, len(prompts), batch_size):
        batch = [list(p) for p in prompts[start:start + batch_size]]
        new = [[] for _ in batch]
        done = [False] * len(batch)
        cache = (TransformerLensKeyValueCache.init_cache(model.cfg, device, len(batch))
                 if use_cache else None)
        tokens, mask = pad_left(batch, pad, device)
        for _ in range(max_new_tokens):
            if cache is None:
                tokens, mask = pad_left([p + n for p, n in zip(batch, new)], pad, device)
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
    return out


# ----------------------------------------------------------------------------------- helpers
def _questions():
    return [Question(question=r["question"], choices=r["choices"], answer=r["answer"],
                     subject="biology") for r in WMDP_ROWS]


READS = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextmanager
def _counting():
    """Counts host reads of tensors (the methods in `READS`) and tensors made from host data
    (`torch.tensor`) while the block runs: {"reads": n, "tensor": n, name: n, ...}."""
    counts = collections.Counter()
    saved = {name: getattr(torch.Tensor, name) for name in READS}
    real_tensor = torch.tensor

    def counted(name, fn):
        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            counts["reads"] += 1
            return fn(self, *args, **kwargs)
        return wrapper

    def tensor(*args, **kwargs):
        counts["tensor"] += 1
        return real_tensor(*args, **kwargs)

    for name, fn in saved.items():
        setattr(torch.Tensor, name, counted(name, fn))
    torch.tensor = tensor
    try:
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.tensor = real_tensor


class _Tok:
    """The model's tokenizer with another end-of-sequence id; records the ids it decodes."""

    def __init__(self, tok, eos):
        self._tok, self.eos_token_id, self.decoded = tok, eos, []

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def decode(self, ids, **kwargs):
        self.decoded.append(list(ids))
        return self._tok.decode(ids, **kwargs)


CONFIGS = {
    # raw prompts: left-padded rows, several candidate batches, candidates dropped by the round trip
    "plain": dict(n_tokens=5, steps=4, search_width=32, topk=16, fmt="letter", seed=3,
                  candidate_batch=16),
    # chat: the shared context from the cache (right-padded rows), every objective term, two
    # positions replaced, a buffer of two
    "chat-enhanced": dict(n_tokens=4, steps=3, search_width=24, topk=8, n_replace=2, fmt="letter",
                          chat=True, objective="enhanced", resid_layers=(0, 1), fluency_weight=0.5,
                          seed=1, candidate_batch=20, buffer_size=2),
    # chat without the cache (left-padded with the template), an initial prefix of another length
    "unshared-init": dict(n_tokens=4, init="hello world foo", steps=3, search_width=16, topk=4,
                          fmt="letter", chat=True, reuse_before=False, seed=5, candidate_batch=7),
}


# ------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("name", list(CONFIGS))
def test_search_equals_the_host_list_loop(tiny_model, name):
    """The device loop's best prefix, best loss per step and candidates scored are exactly the old
    loop's."""
    cfg = GCGConfig(**CONFIGS[name], progress=False)
    train = _questions()[:2]
    got = run_gcg(tiny_model, train, [], cfg, original=tiny_model)
    ids, losses, scored = _ref_run_gcg(tiny_model, train, cfg, original=tiny_model)
    assert got.prefix_ids == ids
    assert got.losses == losses  # float equality
    assert got.candidates_scored == scored
    if name == "plain":  # the round trip dropped some: the device-side selection ran
        assert scored < cfg.steps * cfg.search_width


@pytest.mark.parametrize("kw", [dict(), dict(chat=True),
                                dict(chat=True, objective="enhanced", resid_layers=(0, 1),
                                     fluency_weight=0.5),
                                dict(chat=True, reuse_before=False, fluency_weight=0.5)])
def test_objective_equals_the_host_list_objective(tiny_model, kw):
    """Losses (over several batches and a remainder) and token gradients, bit for bit."""
    cfg = GCGConfig(n_tokens=4, fmt="letter", candidate_batch=8, **kw)
    tok = get_tokenizer(tiny_model)
    slots = [question_slots(tok, q, chat=cfg.chat, fmt="letter") for q in _questions()]
    new, ref = Objective(tiny_model, slots, cfg, tiny_model), _RefObjective(tiny_model, slots,
                                                                            cfg, tiny_model)
    allowed = allowed_tokens(tok, tiny_model.cfg.d_vocab, False).nonzero()[:, 0]
    gen = torch.Generator().manual_seed(0)
    cands = allowed[torch.randint(0, len(allowed), (13, 4), generator=gen)]
    assert torch.equal(new.losses(cands), ref.losses(cands))
    assert torch.equal(new.token_gradient(cands[0]), ref.token_gradient(cands[0]))
    assert new.losses(cands[:0]).shape == (0,)


def test_candidates_equal_the_host_sampler(tiny_model):
    cfg = GCGConfig(n_tokens=5, search_width=40, topk=16, n_replace=2, fmt="letter")
    tok = get_tokenizer(tiny_model)
    allowed = allowed_tokens(tok, tiny_model.cfg.d_vocab, False)
    prefix = torch.tensor(initial_prefix(tok, cfg, allowed))
    grad = torch.randn(5, tiny_model.cfg.d_vocab, generator=torch.Generator().manual_seed(2))
    ref = _ref_sample_candidates(prefix, grad, allowed, cfg, torch.Generator().manual_seed(7))
    for k in (None, min(cfg.topk, int(allowed.sum()))):
        got = sample_candidates(prefix, grad, allowed, cfg, torch.Generator().manual_seed(7), k=k)
        assert torch.equal(got, ref)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_equals_the_host_list_generation(tiny_model, monkeypatch, use_cache):
    """Texts and the ids decoded are the old code's, whatever the end-of-sequence token (none,
    one no row emits, tokens rows emit early so that some or all rows stop), batch size and how
    often the cached path checks for the end."""
    tok = get_tokenizer(tiny_model)
    prompts = [tok(t)["input_ids"] for t in ("The capital of France is", "Gold",
                                             "A dolphin is a kind of sea")]
    plain = _Tok(tok, None)
    _ref_generate_greedy(tiny_model, plain, prompts, max_new_tokens=12)
    first = plain.decoded  # each prompt's 12 greedy ids
    for eos in (None, tok.eos_token_id, first[0][2], first[1][1]):
        for batch_size in (16, 1, 2):
            ref_tok = _Tok(tok, eos)
            ref = _ref_generate_greedy(tiny_model, ref_tok, prompts, max_new_tokens=12,
                                       batch_size=batch_size, use_cache=use_cache)
            for every in ((1, 3, 8) if use_cache else (8,)):
                new_tok = _Tok(tok, eos)
                monkeypatch.setattr(scoring, "get_tokenizer", lambda m, t=new_tok: t)
                got = scoring.generate_greedy(tiny_model, prompts, max_new_tokens=12,
                                              batch_size=batch_size, use_cache=use_cache,
                                              eos_check_every=every)
                assert (got, new_tok.decoded) == (ref, ref_tok.decoded), (eos, batch_size, every)
    assert any(len(d) < 12 for d in ref_tok.decoded)  # an end-of-sequence token cut a row
    monkeypatch.setattr(scoring, "get_tokenizer", lambda m: _Tok(tok, None))
    assert scoring.generate_greedy(tiny_model, prompts, max_new_tokens=0,
                                   use_cache=use_cache) == ["", "", ""]
    with pytest.raises(InterpError, match="eos_check_every"):
        scoring.generate_greedy(tiny_model, prompts, eos_check_every=0)


def test_a_search_step_reads_the_device_a_fixed_number_of_times(tiny_model):
    """Per step: the candidates once (the tokenizer's round trip) and the step's best loss once,
    with one or twelve candidate batches; the objective and the sampler read nothing."""
    train = _questions()[:2]

    def counts(steps, batch):
        cfg = GCGConfig(n_tokens=4, steps=steps, search_width=24, topk=8, fmt="letter",
                        chat=True, progress=False, candidate_batch=batch, seed=1)
        with _counting() as c:
            run_gcg(tiny_model, train, [], cfg)
        return c

    one, three, many = counts(1, 200), counts(3, 200), counts(3, 4)  # 1 and 12 batches a step
    per_step = {key: (three[key] - one[key]) / 2 for key in ("reads", "tolist", "item", "tensor")}
    assert per_step["reads"] <= 2 and per_step["tolist"] <= 1 and per_step["item"] <= 1, per_step
    assert per_step["tensor"] <= 1, per_step  # at most the kept candidates' index
    assert (many["reads"], many["tensor"]) == (three["reads"], three["tensor"])

    cfg = GCGConfig(n_tokens=4, fmt="letter", chat=True, candidate_batch=4)
    tok = get_tokenizer(tiny_model)
    obj = Objective(tiny_model, [question_slots(tok, q, chat=True, fmt="letter")
                                 for q in train], cfg)
    allowed = allowed_tokens(tok, tiny_model.cfg.d_vocab, False)
    prefix = torch.tensor(initial_prefix(tok, cfg, allowed))
    obj.losses(prefix[None])  # the template, built once per prefix length
    cands = prefix.repeat(24, 1)
    with _counting() as c:
        obj.losses(cands)  # 12 batches
        grad = obj.token_gradient(prefix)
        sample_candidates(prefix, grad, allowed, cfg, torch.Generator().manual_seed(0), k=8)
    assert (c["reads"], c["tensor"]) == (0, 0), c


def test_generation_reads_the_device_once_per_batch_and_every_few_tokens(tiny_model,
                                                                          monkeypatch):
    tok = get_tokenizer(tiny_model)
    prompts = [tok(t)["input_ids"] for t in ("The capital of France is", "Gold")]
    for eos, every, use_cache, reads in ((None, 4, True, 1), (None, 4, False, 1),
                                         (tok.eos_token_id, 4, True, 1 + 12 // 4 - 1),
                                         (tok.eos_token_id, 1, True, 1 + 11)):
        monkeypatch.setattr(scoring, "get_tokenizer", lambda m, t=_Tok(tok, eos): t)
        with _counting() as c:
            scoring.generate_greedy(tiny_model, prompts, max_new_tokens=12, use_cache=use_cache,
                                    eos_check_every=every)
        assert c["reads"] == reads, (eos, every, use_cache, c)
