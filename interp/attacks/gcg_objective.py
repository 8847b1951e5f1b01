"""The GCG objective: the loss of many candidate prefixes at once over a fixed set of training
questions, and its gradient with respect to the prefix's one-hot tokens (`interp.attacks.gcg`
runs the search). See `interp.attacks.gcg` for the objective's terms."""

from __future__ import annotations

from typing import Protocol

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.activations import iter_activations
from interp.attacks.gcg_tokens import Slots
from interp.errors import InterpError
from interp.model.hooks import EMBED_HOOK, hook_name, readout
from interp.padding import pad_id, pad_left
from interp.training import fixed_threads


class ObjectiveSettings(Protocol):
    """The settings the objective reads (`interp.attacks.gcg.GCGConfig` has them)."""

    objective: str  # "plain" or "enhanced"
    resid_layers: tuple[int, ...]
    resid_weight: float
    fluency_weight: float
    reuse_before: bool
    candidate_batch: int


class Objective:
    """The GCG loss for many prefixes at once, over a fixed set of questions."""

    def __init__(self, model: HookedTransformer, slots: list[Slots], cfg: ObjectiveSettings,
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
        # constants of every batch, on the device once: each question's target and index
        self._targets = torch.tensor([s.target for s in slots], device=self.device)
        self._questions = torch.arange(len(slots), device=self.device)
        self._templates: dict[int, tuple] = {}  # prefix length -> `_template`

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

    def _forward(self, tokens, mask, prefix_pos, qs: Int[Tensor, "rows"], n_prefix: int,  # noqa: F821
                 embed_hook=None, lengths=None) -> Float[Tensor, "rows"]:  # noqa: F821
        """Loss per row (`qs`: each row's question, on the device). Left-padded rows (`lengths`
        None) end at the last position; with the shared context cached, rows are right-padded and
        end at `lengths - 1`."""
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
        targets = self._targets[qs]
        end = resid[:, -1:] if lengths is None else resid[rows, lengths - 1][:, None]
        last = readout(model, end)[:, 0]
        loss = F.cross_entropy(last.float(), targets, reduction="none")
        if self.layers:
            got = torch.stack([store[n] for n in names], 1)  # (rows, layers, tail, d)
            ref = self.reference[qs]
            dist = ((got - ref) ** 2).sum(-1).mean((-1, -2))
            loss = loss + cfg.resid_weight * dist / (ref**2).sum(-1).mean((-1, -2))
        if cfg.fluency_weight > 0 and n_prefix > 1:
            rows = torch.arange(tokens.shape[0], device=self.device)[:, None]
            pos = prefix_pos[:, None] + torch.arange(n_prefix - 1, device=self.device)[None]
            logits = readout(model, resid[rows, pos])  # (rows, n-1, vocab)
            nxt = tokens[rows, pos + 1]
            nll = F.cross_entropy(logits.float().flatten(0, 1), nxt.flatten(), reduction="none")
            loss = loss + cfg.fluency_weight * nll.view(qs.shape[0], -1).mean(-1)
        return loss

    def _template(self, n: int):
        """Every question's row with an `n`-token prefix slot, built once per prefix length and
        kept on the device: (tokens (q, width) with the slot unfilled, mask, prefix start (q,),
        lengths (q,) or None). Left-padded, or right-padded after the shared cached context (pads
        then follow every real token, so causal attention never reads them, and the mask is all
        ones; `lengths` locates each row's end)."""
        if n not in self._templates:
            seqs, starts = [], []
            for s in self.slots:
                before = [] if self.shared else s.before  # shared: read from the cache
                seqs.append(before + [self.pad] * n + s.after)
                starts.append(len(before))
            if self.shared:
                width = max(len(s) for s in seqs)
                tokens = torch.full((len(seqs), width), self.pad, dtype=torch.long)
                for i, seq in enumerate(seqs):
                    tokens[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                lengths = torch.tensor([len(s) for s in seqs], device=self.device)
                pos = torch.tensor(starts, device=self.device)
                tokens = tokens.to(self.device)
                self._templates[n] = (tokens, torch.ones_like(tokens), pos, lengths)
            else:
                tokens, mask = pad_left(seqs, self.pad, self.device)
                width = tokens.shape[1]
                pos = torch.tensor([width - len(s) + st for s, st in zip(seqs, starts)],
                                   device=self.device)
                self._templates[n] = (tokens, mask, pos, None)
        return self._templates[n]

    def _batch(self, prefixes: Int[Tensor, "c n"]):
        """(tokens, mask, prefix positions, lengths, question of each row) for every prefix with
        every question, prefix-major, built on the device from the template: no host round trip."""
        c, n = prefixes.shape
        nq = len(self.slots)
        template, mask, pos, lengths = self._template(n)
        tokens = template.repeat(c, 1)
        pos = pos.repeat(c)
        idx = pos[:, None] + torch.arange(n, device=self.device)
        tokens.scatter_(1, idx, prefixes[:, None, :].expand(c, nq, n).reshape(c * nq, n))
        qs = self._questions.repeat(c)
        return (tokens, mask.repeat(c, 1), pos, None if lengths is None else lengths.repeat(c),
                qs)

    @torch.no_grad()
    def losses(self, prefixes: Int[Tensor, "c n"]) -> Float[Tensor, "c"]:  # noqa: F821
        """Mean loss over every question, for each candidate prefix (on the model's device; each
        batch's losses go into one preallocated device tensor, nothing is read back to the host)."""
        prefixes = prefixes.to(self.device, torch.long)
        nq, c = len(self.slots), prefixes.shape[0]
        out = None
        per_batch = max(1, self.cfg.candidate_batch // nq)
        for start in range(0, c, per_batch):
            chunk = prefixes[start:start + per_batch]
            tokens, mask, pos, lengths, qs = self._batch(chunk)
            loss = self._forward(tokens, mask, pos, qs, chunk.shape[1], lengths=lengths)
            if out is None:
                out = loss.new_empty(c)
            out[start:start + chunk.shape[0]] = loss.view(chunk.shape[0], nq).mean(-1)
        return out if out is not None else torch.empty(0, device=self.device)

    @fixed_threads()  # gradients: repeatable whatever the caller's thread count
    def token_gradient(self, prefix: Int[Tensor, "n"]) -> Float[Tensor, "n vocab"]:  # noqa: F821
        """d loss / d one-hot(prefix), through the embedding matrix."""
        model = self.model
        w_e = model.embed.W_E
        prefix = prefix.to(w_e.device, torch.long)
        one_hot = F.one_hot(prefix, w_e.shape[0]).to(w_e.dtype).requires_grad_(True)
        tokens, mask, pos, lengths, qs = self._batch(prefix[None])
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
            loss = self._forward(tokens, mask, pos, qs, n, embed_hook=swap_in,
                                 lengths=lengths).mean()
            (grad,) = torch.autograd.grad(loss, one_hot)
        finally:
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)
        return grad
