"""GCG candidates scored per second against nanoGCG, run in nanoGCG's own environment."""

from __future__ import annotations

import json
import subprocess

import torch

from benchmarks.common import BenchResult, Context, row
from benchmarks.nanogcg_env import find_nanogcg, nanogcg_install_command

NANOGCG_CHILD = r"""
import json, sys, time, torch
import nanogcg
from nanogcg import GCGConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, prompt, target, steps, width, topk, n_tokens = json.loads(sys.argv[1])
import pathlib
p = pathlib.Path(gguf)
tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name,
                                             torch_dtype=torch.float32).eval()
torch.set_num_threads(THREADS)
cfg = GCGConfig(num_steps=steps, search_width=width, topk=topk, seed=0, verbosity="ERROR",
                optim_str_init=" ".join(["x"] * n_tokens), use_prefix_cache=True)
t0 = time.perf_counter()
res = nanogcg.run(model, tok, [{"role": "user", "content": prompt}], target, cfg)
secs = time.perf_counter() - t0
print(json.dumps({"seconds": secs, "losses": res.losses, "best_loss": res.best_loss}))
"""


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
    args = json.dumps([str(embedded_gguf_path()), "{optim_str} " + q.question, target.strip(),
                       steps, width, topk, n_tokens])
    child = NANOGCG_CHILD.replace("THREADS", str(torch.get_num_threads()))
    proc = subprocess.run([py, "-c", child, args], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return row("gcg-vs-nanogcg", ours_cps, None, "candidates/s", None, 2.0,
                   skipped=f"nanoGCG ({py}) failed: {last[:200]}", ours_losses=ours.losses)
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    peer_cps = steps * width / theirs["seconds"]
    return row("gcg-vs-nanogcg", ours_cps, peer_cps, "candidates/s", ours_cps / peer_cps,
               2.0, ours_losses=ours.losses, peer_losses=theirs["losses"],
               steps=steps, search_width=width, topk=topk)
