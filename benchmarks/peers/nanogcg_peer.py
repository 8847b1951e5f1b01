"""nanoGCG on the embedded model, run by nanoGCG's own interpreter (`make bench-peers` sets it
up; it pins transformers <= 4.47.1) and timed there; prints one JSON line: the seconds
`nanogcg.run` took, its per-step losses and its best loss.

    .venv-nanogcg/bin/python -m benchmarks.peers.nanogcg_peer --gguf FILE --prompt TEXT \\
        --target TEXT --steps 5 --width 128 --topk 64 --n-tokens 10 --threads 2

Imports only nanoGCG's environment (nanogcg, transformers, torch): never `interp`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The run's settings: the GGUF file, the prompt (with `{optim_str}` where the attack string
    goes), the target, and GCG's steps, search width, top-k, string length and torch threads."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers.nanogcg_peer")
    p.add_argument("--gguf", required=True, help="the model's GGUF file")
    p.add_argument("--prompt", required=True, help="the user message, with {optim_str}")
    p.add_argument("--target", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--width", type=int, required=True, help="candidates per step")
    p.add_argument("--topk", type=int, required=True)
    p.add_argument("--n-tokens", type=int, required=True, help="tokens in the attack string")
    p.add_argument("--threads", type=int, required=True, help="torch threads (as ours)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Load the model as transformers reads the GGUF (float32) and time one nanoGCG run."""
    import nanogcg
    import torch
    from nanogcg import GCGConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(args.gguf)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 torch_dtype=torch.float32).eval()
    torch.set_num_threads(args.threads)
    cfg = GCGConfig(num_steps=args.steps, search_width=args.width, topk=args.topk, seed=0,
                    verbosity="ERROR", optim_str_init=" ".join(["x"] * args.n_tokens),
                    use_prefix_cache=True)
    t0 = time.perf_counter()
    res = nanogcg.run(model, tok, [{"role": "user", "content": args.prompt}], args.target, cfg)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "losses": res.losses, "best_loss": res.best_loss}


def main(argv: list[str] | None = None) -> None:
    """Run nanoGCG with the command line's settings and print the result as one JSON line."""
    print(json.dumps(run(parse_args(argv))))


if __name__ == "__main__":
    main()
