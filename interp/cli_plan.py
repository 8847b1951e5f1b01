"""`interp plan`: the time a preset will take here, or its memory on a card (`--card`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_plan(args: argparse.Namespace) -> int:
    """`interp plan`: time each stage of a preset on this hardware and print the projection."""
    from interp.pipelines.plan import PlanConfig, plan, summary_lines
    from interp.store import check_writable

    check_writable(Path(args.out))
    if args.card is not None:  # memory only, on the meta device: no GPU, no weights
        from interp.pipelines.memory_plan import memory_lines, memory_plan
        from interp.store import write_json

        mem = memory_plan(args.preset, args.shape, args.card, dtype=args.dtype,
                          attention=args.attention, prompt_tokens=args.prompt_tokens,
                          train=args.train_protections)
        write_json(Path(args.out), mem.to_json())
        print("\n".join(memory_lines(mem)))
        print(f"-> {args.out}")
        return 0
    cfg = PlanConfig(preset=args.preset, shape=args.shape, device=args.device, dtype=args.dtype,
                     probe_steps=args.probe_steps, prompt_tokens=args.prompt_tokens,
                     forget=args.forget, retain=args.retain, memory_mb=args.memory_mb)
    preset = None
    if args.train_protections:
        from interp.pipelines.presets import get_preset, train_protections

        preset = train_protections(get_preset(args.preset), args.train_protections)
    result = plan(cfg, Path(args.out), preset=preset)
    print("\n".join(summary_lines(result)))
    print(f"-> {args.out}")
    return 0


def add_plan_parser(sub, presets: list[str]) -> None:
    """The `plan` subcommand's arguments."""
    p = sub.add_parser("plan", help="the time and memory a preset will take here, measured on a "
                       "random-weight model of its shape (no download)")
    p.add_argument("--preset", choices=presets, default="paper")
    p.add_argument("--shape", default="zephyr",
                   help="zephyr (Zephyr-7B), tiny, a config.json, or a model folder with one")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="default: the preset's (bfloat16 for paper)")
    p.add_argument("--out", required=True, help="plan JSON")
    p.add_argument("--probe-steps", type=int, default=3,
                   help="steps measured per stage; the first is warm-up (default 3)")
    p.add_argument("--prompt-tokens", type=int, default=160,
                   help="tokens in a scored question's prompt (default 160)")
    p.add_argument("--forget", type=int, default=None,
                   help="forget questions (default for paper: WMDP-bio's 1,273)")
    p.add_argument("--retain", type=int, default=None,
                   help="retain questions (default for paper: MMLU's 14,042)")
    p.add_argument("--memory-mb", type=float, default=None,
                   help="plan for this much memory (default: the device's)")
    p.add_argument("--card", type=float, default=None, metavar="GIB",
                   help="instead of timing here: each stage's peak memory on a card of this "
                        "many GiB (e.g. 80), measured on the meta device (no GPU, no weights)")
    p.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa",
                   help="with --card: the attention path to plan for (default sdpa)")
    p.add_argument("--train-protections", nargs="?", const="all", default=None,
                   metavar="METHODS", help="plan training the protections the preset loads "
                   "(all, or e.g. npo,dpo) instead of loading them")
    p.set_defaults(func=cmd_plan)
