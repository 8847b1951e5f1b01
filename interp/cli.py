"""The `interp` command. Every subcommand turns `InterpError` into one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2",
                   help="smollm2 (embedded), a model folder, a .gguf file or a TransformerLens "
                        "model name")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder overriding the model's")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 (default) or bfloat16")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a local HF folder's own Python code (off by default)")


def cmd_eval(args: argparse.Namespace) -> int:
    from interp.data.sources import load_source
    from interp.evaluate import evaluate
    from interp.models import load_model
    from interp.store import check_writable, write_json

    check_writable(Path(args.out))
    questions = load_source(args.data, subject=args.subject, limit=args.limit)
    model = load_model(args.model, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer,
                       trust_remote_code=args.trust_remote_code)
    start = time.perf_counter()
    result = evaluate(model, questions, prefix=args.prefix, chat=args.chat, fmt=args.format,
                      batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    payload = result.to_json()
    payload.update({"model": args.model, "data": args.data, "limit": args.limit,
                    "batch_size": args.batch_size, "seconds": round(seconds, 3),
                    "questions_per_second": round(result.n / seconds, 2)})
    write_json(Path(args.out), payload)
    mode = "chat" if args.chat else "raw"
    print(f"{args.data}: accuracy {result.accuracy:.3f} on {result.n} questions "
          f"({mode}, {payload['format']}) -> {args.out}")
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from interp.data.build import build_benchmark

    manifest = build_benchmark(args.preset, Path(args.out), seed=args.seed, model_spec=args.model,
                               device=args.device)
    print(json.dumps(manifest["counts"], indent=1))
    return 0


def _parse_overrides(pairs: list[str]) -> dict:
    from interp.errors import InterpError

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InterpError(f"--set takes KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_protect(args: argparse.Namespace) -> int:
    from interp.protect import protect

    report = protect(args.method, args.model, Path(args.data), Path(args.out),
                     preset=args.preset, overrides=_parse_overrides(args.set), device=args.device)
    for key, before in report["before"].items():
        after = report["after"][key]
        print(f"{key:24s} {before['accuracy']:.3f} -> {after['accuracy']:.3f}  (n={after['n']})")
    if "refusal" in report:
        print(f"refusal rate (chat, forget): {report['refusal']['refusal_rate']:.3f}")
    print(f"{args.method}: trained in {report['train_seconds']} s -> {args.out}")
    return 0


def cmd_attack_directions(args: argparse.Namespace) -> int:
    from interp.attacks import DirectionsAttackConfig, directions_attack
    from interp.directions import DirectionsConfig
    from interp.models import load_model

    cfg = DirectionsAttackConfig(
        DirectionsConfig(hook=args.hook, positions=args.positions, skip_first=args.skip_first,
                         outlier_z=None if args.outlier_z <= 0 else args.outlier_z),
        sweep_limit=args.sweep_limit)
    original = load_model(args.original, device=args.device)
    unlearned = load_model(args.unlearned, device=args.device)
    r = directions_attack(original, unlearned, Path(args.data), Path(args.out), cfg)
    print(f"no attack: forget {r['no_attack']['forget']:.3f} retain {r['no_attack']['retain']:.3f}")
    for key in ("ablate_best_layer", "ablate_all_layers", "orthogonalize_best_everywhere"):
        print(f"{key}: forget {r[key]['forget']:.3f} retain {r[key]['retain']:.3f}")
    print(f"best layer {r['best_layer']}; figures: {', '.join(r['figures'])}")
    return 0


def cmd_attack_lens(args: argparse.Namespace) -> int:
    from interp.attacks import lens_attack
    from interp.models import load_model

    specs = dict(pair.split("=", 1) if "=" in pair else (pair, pair) for pair in args.model)
    models = {name: load_model(spec, device=args.device) for name, spec in specs.items()}
    r = lens_attack(models, Path(args.data), Path(args.out), chat=args.chat, limit=args.limit)
    for name, m in r["models"].items():
        print(f"{name}: final layer {m['final_accuracy']:.3f}, best layer {m['best_layer']} "
              f"{m['best_accuracy']:.3f}")
    return 0


def _fractions(text: str) -> tuple[float, ...]:
    from interp.errors import InterpError

    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InterpError(f"--grid takes fractions separated by commas, got {text!r}") from None


def _named(pairs: list[str] | None) -> dict[str, Path]:
    from interp.errors import InterpError

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InterpError(f"expected NAME=FOLDER, got {pair!r}")
        name, folder = pair.split("=", 1)
        out[name] = Path(folder)
    return out


def cmd_attack_prune(args: argparse.Namespace) -> int:
    from interp.attacks.prune import PruneAttackConfig, prune_attack
    from interp.models import load_model
    from interp.store import check_writable

    cfg = PruneAttackConfig(level=args.level, grid=_fractions(args.grid),
                            retain_drop=args.retain_drop, eval_limit=args.eval_limit,
                            n_forget=args.n_forget, n_utility=args.n_utility)
    from interp.attacks.prune import _cells

    _cells(cfg.grid)  # a bad grid fails before the model loads
    check_writable(Path(args.out) / "result.json")
    model = load_model(args.model, device=args.device)
    r = prune_attack(model, Path(args.data), Path(args.out), cfg)
    b = r["best"]
    print(f"no attack: forget {r['no_attack']['forget']:.3f} retain {r['no_attack']['retain']:.3f}")
    print(f"best cell q={b['q']} p={b['p']}: forget {b['forget_full']:.3f} retain "
          f"{b['retain_full']:.3f}, {r['pruned_pct']:.2f}% of {r['level']}s pruned")
    return 0


def cmd_attack_compare(args: argparse.Namespace) -> int:
    from interp.attacks.compare import compare_methods

    r = compare_methods(_named(args.directions), _named(args.prune), Path(args.out))
    for pair, cos in r.get("direction_cosine", {}).items():
        vals = [c for c in cos if c is not None]
        print(f"directions {pair}: mean cosine {sum(vals) / max(1, len(vals)):.3f}")
    for pair, j in r.get("neuron_jaccard", {}).items():
        print(f"pruned neurons {pair}: Jaccard {j['overall']}")
    return 0


def _ints(text: str, flag: str) -> tuple[int, ...]:
    from interp.errors import InterpError

    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InterpError(f"{flag} takes whole numbers separated by commas, got {text!r}") \
            from None
    if any(v < 1 for v in values):
        raise InterpError(f"{flag} values must be at least 1, got {text!r}")
    return values


def cmd_attack_finetune(args: argparse.Namespace) -> int:
    from interp.attacks.finetune import FinetuneConfig, finetune_attack
    from interp.lora import LoRAConfig
    from interp.models import load_model
    from interp.store import check_writable

    cfg = FinetuneConfig(unrelated_n=_ints(args.n, "--n") if args.n else (),
                         forget_k=_ints(args.k, "--k") if args.k else (),
                         lora=LoRAConfig(rank=args.rank, alpha=args.alpha, dropout=args.dropout),
                         lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                         max_steps=args.max_steps, eval_limit=args.eval_limit, seed=args.seed)
    check_writable(Path(args.out) / "result.json")
    model = load_model(args.model, device=args.device)
    r = finetune_attack(model, Path(args.data), Path(args.out), cfg)
    base = r["no_attack"]
    print(f"no attack: forget {base['forget']:.3f} retain {base['retain']:.3f}")
    for name, c in r["cells"].items():
        held = f" (held-out {c['forget_heldout']:.3f})" if "forget_heldout" in c else ""
        print(f"{name}: forget {c['forget']:.3f}{held} retain {c['retain']:.3f}, "
              f"{c['steps']} steps, {c['seconds']} s")
    return 0


def cmd_attack_gcg(args: argparse.Namespace) -> int:
    from interp.attacks.gcg import gcg_attack
    from interp.gcg import GCGConfig
    from interp.models import load_model
    from interp.store import check_writable

    layers = _ints(args.resid_layers, "--resid-layers") if args.resid_layers else ()
    cfg = GCGConfig(n_tokens=args.n_tokens, init=args.init, steps=args.steps,
                    search_width=args.search_width, topk=args.topk, n_replace=args.n_replace,
                    objective=args.objective, resid_layers=layers,
                    resid_weight=args.resid_weight, fluency_weight=args.fluency_weight,
                    chat=args.chat, eval_every=args.eval_every, seed=args.seed)
    check_writable(Path(args.out) / "result.json")
    if args.objective == "enhanced" and not args.original:
        from interp.errors import InterpError

        raise InterpError("--objective enhanced needs --original (the model before unlearning)")
    model = load_model(args.model, device=args.device)
    original = load_model(args.original, device=args.device) if args.original else None
    r = gcg_attack(model, Path(args.data), Path(args.out), cfg, original=original,
                   n_train=args.n_train, heldout_limit=args.heldout_limit)
    print(f"prefix: {r['prefix']!r}")
    for mode, s in r["scores"].items():
        print(f"{mode}: held-out forget {s['forget_no_prefix']:.3f} -> {s['forget']:.3f}, "
              f"retain {s['retain_no_prefix']:.3f} -> {s['retain']:.3f}")
    print(f"{r['seconds_per_step']} s per step, {r['candidates_per_second']} candidates/s")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from interp.reproduce import reproduce

    start = time.perf_counter()
    r = reproduce(args.preset, Path(args.out), seed=args.seed, device=args.device,
                  figures_dir=Path(args.figures) if args.figures else None,
                  executor=args.executor, address=args.address, n_devices=args.n_devices)
    print((Path(args.out) / "table.md").read_text())
    print(f"{len(r['rows'])} rows -> {Path(args.out) / 'results.json'}; "
          f"{time.perf_counter() - start:.0f} s this run")
    if r.get("peak_rss_mb") is not None:
        print(f"peak memory of the processes that computed cells: {r['peak_rss_mb']:.0f} MB")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from interp.audit import audit
    from interp.data.sources import load_source
    from interp.store import check_writable

    check_writable(Path(args.out) / "audit.json")
    forget = load_source(args.forget, subject=args.subject, limit=args.limit)
    retain = load_source(args.retain, limit=args.limit)
    r = audit(args.original, args.unlearned, forget, retain, Path(args.out), budget=args.budget,
              seed=args.seed, retain_drop=args.retain_drop, device=args.device,
              executor=args.executor, address=args.address)
    h = r["headline"]
    print(f"forget accuracy: original {h['original_forget']:.3f}, unlearned "
          f"{h['unlearned_forget']:.3f}")
    for a in r["attacks"]:
        retain = "" if a["retain"] is None else f" retain {a['retain']:.3f}"
        print(f"  {a['attack']}: forget {a['forget']:.3f}{retain}")
    if h["recoverable_forget"] is not None:
        print(f"recoverable knowledge: {h['recoverable_forget']:.3f} ({h['best_attack']})")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from interp.bench import markdown, run_bench

    payload = run_bench(args.names or None, Path(args.out), repeats=args.repeats,
                        n_questions=args.n_questions)
    print(markdown(payload))
    print(f"-> {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interp",
        description="Is the knowledge gone, or only hidden? Attacks on unlearned models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="score multiple-choice questions (the paper's scorer)")
    _add_model_args(p)
    p.add_argument("--data", required=True,
                   help="a .json/.jsonl/.parquet/.csv file in WMDP's schema, wmdp-bio, wmdp-cyber, "
                        "mmlu[:SUBJECT], or a built-in set such as laptop:forget")
    p.add_argument("--format", choices=["letter", "cloze"], default=None,
                   help="override the questions' own format")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--prefix", default=None, help="adversarial prefix (prefix + space + prompt)")
    p.add_argument("--subject", default=None, help="subject for the letter-format header")
    p.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True, help="result JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("protect", help="train a protection: rmu, npo or dpo")
    p.add_argument("method", choices=["rmu", "npo", "dpo"])
    p.add_argument("--model", default="smollm2", help="the model to protect (any load_model spec)")
    p.add_argument("--data", required=True, help="a folder built by `interp data build`")
    p.add_argument("--out", required=True, help="output folder for the protected model")
    p.add_argument("--preset", choices=["smoke", "laptop", "paper"], default="laptop",
                   help="which scale's settings to start from")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one setting of the method's config (repeatable)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_protect)

    attack = sub.add_parser("attack", help="attacks on a protected model")
    attack_sub = attack.add_subparsers(dest="attack", required=True)
    a = attack_sub.add_parser("directions", help="difference-in-means directions: ablation "
                              "sweep and weight orthogonalization")
    a.add_argument("--original", default="smollm2")
    a.add_argument("--unlearned", required=True)
    a.add_argument("--data", required=True, help="a folder built by `interp data build`")
    a.add_argument("--out", required=True)
    a.add_argument("--hook", default="resid_post",
                   choices=["resid_post", "resid_pre", "attn_out", "mlp_out"])
    a.add_argument("--positions", default="all", choices=["all", "last"])
    a.add_argument("--skip-first", type=int, default=1)
    a.add_argument("--outlier-z", type=float, default=3.0, help="0 keeps every token")
    a.add_argument("--sweep-limit", type=int, default=100)
    a.add_argument("--device", default=None)
    a.set_defaults(func=cmd_attack_directions)
    a = attack_sub.add_parser("lens", help="logit lens accuracy per layer")
    a.add_argument("--model", action="append", required=True, metavar="[NAME=]SPEC",
                   help="a model to read (repeat to compare models)")
    a.add_argument("--data", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--chat", action="store_true")
    a.add_argument("--limit", type=int, default=200)
    a.add_argument("--device", default=None)
    a.set_defaults(func=cmd_attack_lens)

    a = attack_sub.add_parser("prune", help="SNIP attribution and set-difference pruning")
    a.add_argument("--model", required=True, help="the protected model")
    a.add_argument("--data", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--level", choices=["neuron", "weight"], default="neuron")
    a.add_argument("--grid", default="0.005,0.01,0.025,0.05,0.075,0.1,0.125,0.15,0.2",
                   help="fractions for p and q (cells with q <= p)")
    a.add_argument("--retain-drop", type=float, default=0.10,
                   help="best cell: retain accuracy at most this far below no attack")
    a.add_argument("--eval-limit", type=int, default=100)
    a.add_argument("--n-forget", type=int, default=64)
    a.add_argument("--n-utility", type=int, default=64)
    a.add_argument("--device", default=None)
    a.set_defaults(func=cmd_attack_prune)
    a = attack_sub.add_parser("compare", help="cosine of directions and Jaccard of pruned "
                              "neurons between protected models")
    a.add_argument("--directions", action="append", metavar="NAME=FOLDER",
                   help="a finished `attack directions` folder (repeat)")
    a.add_argument("--prune", action="append", metavar="NAME=FOLDER",
                   help="a finished neuron-level `attack prune` folder (repeat)")
    a.add_argument("--out", required=True)
    a.set_defaults(func=cmd_attack_compare)

    a = attack_sub.add_parser("finetune", help="LoRA finetuning on unrelated text (n samples) "
                              "or on k forget samples")
    a.add_argument("--model", required=True, help="the protected model")
    a.add_argument("--data", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--n", default="10,100,1000", help="unrelated sample counts ('' for none)")
    a.add_argument("--k", default="5,10,50", help="forget sample counts ('' for none)")
    a.add_argument("--rank", type=int, default=16)
    a.add_argument("--alpha", type=float, default=16.0)
    a.add_argument("--dropout", type=float, default=0.0)
    a.add_argument("--lr", type=float, default=2e-4)
    a.add_argument("--epochs", type=int, default=3)
    a.add_argument("--batch-size", type=int, default=8)
    a.add_argument("--max-steps", type=int, default=None)
    a.add_argument("--eval-limit", type=int, default=None)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default=None)
    a.set_defaults(func=cmd_attack_finetune)
    a = attack_sub.add_parser("gcg", help="universal adversarial prefix (GCG, plain or enhanced)")
    a.add_argument("--model", required=True, help="the protected model")
    a.add_argument("--original", default=None, help="model before unlearning (enhanced objective)")
    a.add_argument("--data", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--objective", choices=["plain", "enhanced"], default="plain")
    a.add_argument("--resid-layers", default="", help="layers for the enhanced objective, e.g. 5,7")
    a.add_argument("--resid-weight", type=float, default=1.0)
    a.add_argument("--fluency-weight", type=float, default=0.0)
    a.add_argument("--n-tokens", type=int, default=20)
    a.add_argument("--init", default=None, help="initial prefix text")
    a.add_argument("--steps", type=int, default=250)
    a.add_argument("--search-width", type=int, default=512)
    a.add_argument("--topk", type=int, default=256)
    a.add_argument("--n-replace", type=int, default=1)
    a.add_argument("--n-train", type=int, default=8, help="forget questions optimized on")
    a.add_argument("--heldout-limit", type=int, default=100)
    a.add_argument("--chat", action="store_true", help="optimize inside the chat template")
    a.add_argument("--eval-every", type=int, default=0)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default=None)
    a.set_defaults(func=cmd_attack_gcg)

    p = sub.add_parser("reproduce", help="the paper end to end: benchmark, protections, every "
                       "attack, table and figures (resumable)")
    p.add_argument("--preset", choices=["smoke", "laptop", "paper"], default="laptop",
                   help="paper: Zephyr-7B, cais/Zephyr_RMU, WMDP and MMLU (GPU, hub access)")
    p.add_argument("--out", required=True, help="run folder (a rerun skips finished cells)")
    p.add_argument("--executor", choices=["serial", "ray"], default="serial",
                   help="ray: every cell of a stage is a Ray task (pip install -e '.[ray]')")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.add_argument("--n-devices", type=int, default=None,
                   help="spread each model's blocks over N GPUs (TransformerLens placement)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figures", default=None,
                   help="also copy the key PNG figures here (e.g. figures/)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("audit", help="every attack on your own (original, unlearned) pair")
    p.add_argument("--original", required=True, help="the model before unlearning")
    p.add_argument("--unlearned", required=True, help="the unlearned / safety-trained model")
    p.add_argument("--forget", required=True, help="forget questions (any --data source)")
    p.add_argument("--retain", required=True, help="retain questions (any --data source)")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", choices=["quick", "full"], default="quick")
    p.add_argument("--subject", default=None)
    p.add_argument("--limit", type=int, default=None, help="use only the first N of each set")
    p.add_argument("--retain-drop", type=float, default=0.10,
                   help="an attack counts if retain accuracy stays within this of the unlearned")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--executor", choices=["serial", "ray"], default="serial",
                   help="ray: every attack is a Ray task (pip install -e '.[ray]')")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("bench", help="speed against lm-eval, transformers and nanoGCG (ratios)")
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all): "
                   "scoring-vs-transformers scoring-vs-lm-eval directions generation "
                   "utilisation gcg")
    p.add_argument("--out", required=True, help="result JSON (a markdown table goes beside it)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-questions", type=int, default=128)
    p.set_defaults(func=cmd_bench)

    data = sub.add_parser("data", help="build the embedded benchmark")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    b = data_sub.add_parser("build", help="questions, corpora and preference data as JSONL")
    b.add_argument("--preset", choices=["smoke", "laptop"], default="laptop")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--model", default=None,
                   help="model whose right answers are kept (default: the preset's)")
    b.add_argument("--device", default=None)
    b.set_defaults(func=cmd_data_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    from interp.errors import InterpError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InterpError as exc:
        print(f"interp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interp: interrupted; finished work is saved, rerun to resume", file=sys.stderr)
        return 130
    except MemoryError:
        print("interp: error: out of memory; lower --batch-size", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
