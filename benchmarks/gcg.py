"""GCG candidates scored per second against nanoGCG, run in nanoGCG's own environment."""

from __future__ import annotations

import torch

from benchmarks.child import last_error, last_json, run_module
from benchmarks.common import BenchResult, Context, row
from benchmarks.nanogcg_env import find_nanogcg, nanogcg_install_command

NANOGCG_PEER = "benchmarks.peers.nanogcg_peer"  # run by nanoGCG's interpreter


def bench_gcg(ctx: Context, steps: int = 5, width: int = 128, topk: int = 64,
              n_tokens: int = 10) -> BenchResult:
    """GCG candidates scored per second vs nanoGCG: same model, question, target token, search
    width, top-k and steps; the prefix sits before the question inside the chat template."""
    from interp.attacks.gcg import GCGConfig, run_gcg

    q = ctx.questions[0]
    cfg = GCGConfig(n_tokens=n_tokens, steps=steps, search_width=width, topk=topk, chat=True,
                    progress=False)
    ours = run_gcg(ctx.model, [q], [], cfg)
    return gcg_vs_nanogcg(q, ours, steps, width, topk, n_tokens)


def gcg_vs_nanogcg(q, ours, steps: int, width: int, topk: int, n_tokens: int) -> BenchResult:
    """The gcg row: our run (`candidates_per_second`, `losses`) against nanoGCG on question `q`
    in nanoGCG's own environment; skipped, with the command that sets it up, when there is none
    (our speed is still reported)."""
    from interp.model.load import embedded_gguf_path

    ours_cps = ours.candidates_per_second
    py, why = find_nanogcg()
    if py is None:
        return row("gcg-vs-nanogcg", ours_cps, None, "candidates/s", None, 2.0,
                   skipped=f"{why}; install it with: {nanogcg_install_command()}",
                   ours_losses=ours.losses)
    target = " " + q.choices[q.answer].strip()
    args = {"gguf": embedded_gguf_path(), "prompt": "{optim_str} " + q.question,
            "target": target.strip(), "steps": steps, "width": width, "topk": topk,
            "n-tokens": n_tokens, "threads": torch.get_num_threads()}
    proc = run_module(py, NANOGCG_PEER, [f"--{k}={v}" for k, v in args.items()])
    if proc.returncode != 0:
        return row("gcg-vs-nanogcg", ours_cps, None, "candidates/s", None, 2.0,
                   skipped=f"nanoGCG ({py}) failed: {last_error(proc)[:200]}",
                   ours_losses=ours.losses)
    theirs = last_json(proc)
    peer_cps = steps * width / theirs["seconds"]
    return row("gcg-vs-nanogcg", ours_cps, peer_cps, "candidates/s", ours_cps / peer_cps,
               2.0, ours_losses=ours.losses, peer_losses=theirs["losses"],
               steps=steps, search_width=width, topk=topk)
