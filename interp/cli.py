"""The `interp` command. Every subcommand turns `InterpError` into one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from interp.cli_plan import add_plan_parser


def cmd_eval(args: argparse.Namespace) -> int:
    """`interp eval`: score a model on a question source and write the per-question result as
    JSON."""
    from interp.data.sources import load_source
    from interp.model.load import load_model
    from interp.scoring import evaluate
    from interp.store import check_writable, write_json

    check_writable(Path(args.out))
    questions = load_source(args.data, subject=args.subject, limit=args.limit)
    model = load_model(args.model, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer,
                       trust_remote_code=args.trust_remote_code, letter_ids=args.letter_ids)
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
    """`interp data build`: build a preset's benchmark folder and print its counts."""
    from interp.data.build import build_benchmark

    manifest = build_benchmark(args.preset, Path(args.out), seed=args.seed, model_spec=args.model,
                               device=args.device, dtype=args.dtype, tokenizer=args.tokenizer,
                               letter_ids=args.letter_ids)
    print(json.dumps(manifest["counts"], indent=1))
    return 0


def _named(pairs: list[str] | None, what: str = "FOLDER") -> dict[str, str]:
    """NAME=VALUE pairs (a bare VALUE is named by itself)."""
    from interp.errors import InterpError

    out = {}
    for pair in pairs or []:
        if "=" not in pair and what == "FOLDER":
            raise InterpError(f"expected NAME=FOLDER, got {pair!r}")
        name, value = pair.split("=", 1) if "=" in pair else (pair, pair)
        out[name] = value
    return out


def _letter_ids(args: argparse.Namespace) -> str | None:
    """--letter-ids, else the --preset's rule (the paper preset: official), else None."""
    from interp.pipelines.presets import get_preset

    if args.letter_ids is None and getattr(args, "preset", None):
        return get_preset(args.preset).letter_ids
    return args.letter_ids


def _load(args: argparse.Namespace, spec: str):
    from interp.model.load import load_model

    return load_model(spec, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer,
                      trust_remote_code=getattr(args, "trust_remote_code", False),
                      letter_ids=_letter_ids(args))


def _base_config(kind: str, name: str, preset: str | None):
    """The preset's config for a protection or attack, else the module's `Config()`."""
    from interp.attacks.base import get as get_attack
    from interp.pipelines.presets import get_preset
    from interp.protections.base import get as get_protection

    module = get_protection(name) if kind == "protect" else get_attack(name)
    if preset:
        table = get_preset(preset).protections if kind == "protect" else get_preset(preset).attacks
        if name in table:
            return table[name]
    return module.Config()


def cmd_protect(args: argparse.Namespace) -> int:
    """`interp protect`: train one protection on a data folder and print accuracy before and
    after."""
    from interp.options import config_from_args
    from interp.pipelines.protect import protect
    from interp.store import check_writable

    cfg = config_from_args(_base_config("protect", args.method, args.preset), args,
                           f"{args.method} setting")
    check_writable(Path(args.out) / "protection.json")
    report = protect(args.method, args.model, Path(args.data), Path(args.out), cfg,
                     preset=args.preset or "", device=args.device, dtype=args.dtype,
                     tokenizer=args.tokenizer, letter_ids=_letter_ids(args))
    for key, before in report.before.items():
        after = report.after[key]
        print(f"{key:24s} {before.accuracy:.3f} -> {after.accuracy:.3f}  (n={after.n})")
    if getattr(report, "refusal", None):
        print(f"refusal rate (chat, forget): {report.refusal['refusal_rate']:.3f}")
    print(f"{args.method}: trained in {report.train_seconds} s -> {args.out}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    """Any registered attack: `--model` (repeatable as NAME=SPEC), its Config's flags."""
    from interp.attacks.base import get
    from interp.errors import InterpError
    from interp.options import config_from_args
    from interp.plots import save_figure, ship_plotlyjs
    from interp.store import check_writable

    module = get(args.attack)
    cfg = config_from_args(_base_config("attack", args.attack, args.preset), args,
                           f"{args.attack} setting")
    needs = module.SPEC.wants_original(cfg)
    if needs and not args.original:
        raise InterpError(f"the {args.attack} attack with these settings needs --original "
                          "(the model before unlearning)")
    out = Path(args.out)
    check_writable(out / "result.json")
    models = _named(args.model, "SPEC")
    ship_plotlyjs(out)
    original = _load(args, args.original) if args.original and needs else None
    results = {}
    for name, spec in models.items():
        folder = out if len(models) == 1 else out / name
        # a recipe that depends on the protection (the paper's SNIP data) is resolved by NAME
        results[name] = module.run(_load(args, spec), Path(args.data),
                                   module.SPEC.config_for(cfg, name), original=original,
                                   out=folder)
        for row in results[name].rows(name):
            if row.column:
                note = f" ({row.note})" if row.note else ""
                print(f"{name} {row.attack} {row.split} {row.mode}: {row.accuracy:.3f}{note} "
                      f"(n={row.n})")
    if len(models) > 1 and getattr(module.Result, "plot_models", None):
        save_figure(module.Result.plot_models(results), out / f"all_{args.attack}")
    print(f"-> {out}")
    return 0


def cmd_attack_compare(args: argparse.Namespace) -> int:
    """`interp attack compare`: compare finished directions and pruning folders across protected
    models."""
    from interp.attacks import compare

    r = compare.run(_named(args.directions), _named(args.prune), out=Path(args.out))
    for pair, cos in r.direction_cosine.items():
        vals = [c for c in cos if c is not None]
        print(f"directions {pair}: mean cosine {sum(vals) / max(1, len(vals)):.3f}")
    for pair, j in r.neuron_jaccard.items():
        print(f"pruned neurons {pair}: Jaccard {j['overall']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`interp export`: save a model to a folder in the chosen format."""
    from interp.model.load import save_model
    from interp.store import check_writable

    check_writable(Path(args.out) / "config.json")
    model = _load(args, args.model)
    folder = save_model(model, Path(args.out), format=args.format)
    print(f"{args.model} -> {folder} ({args.format})")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """`interp reproduce`: run a preset end to end and print its results table."""
    from interp.pipelines.presets import get_preset, train_protections
    from interp.pipelines.reproduce import reproduce

    start = time.perf_counter()
    preset = get_preset(args.preset)
    if args.train_protections:
        preset = train_protections(preset, args.train_protections)
    r = reproduce(preset, Path(args.out), seed=args.seed, device=args.device,
                  figures_dir=Path(args.figures) if args.figures else None,
                  executor=args.executor, address=args.address, n_devices=args.n_devices,
                  dtype=args.dtype, tokenizer=args.tokenizer, letter_ids=args.letter_ids)
    print((Path(args.out) / "table.md").read_text())
    n_rows = (sum(len(d["rows"]) for d in r["domains"].values()) if "domains" in r
              else len(r["rows"]))
    print(f"{n_rows} rows -> {Path(args.out) / 'results.json'}; "
          f"{time.perf_counter() - start:.0f} s this run")
    if "domains" in r:
        peaks = [d["peak_rss_mb"] for d in r["domains"].values() if d.get("peak_rss_mb")]
        r = {"peak_rss_mb": max(peaks) if peaks else None}
    if r.get("peak_rss_mb") is not None:
        print(f"peak memory of the processes that computed cells: {r['peak_rss_mb']:.0f} MB")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """`interp audit`: attack an unlearned model against its original and print the recoverable
    knowledge."""
    from interp.data.sources import load_source
    from interp.pipelines.audit import audit, summary_lines
    from interp.store import check_writable

    check_writable(Path(args.out) / "audit.json")
    forget = load_source(args.forget, subject=args.subject, limit=args.limit)
    retain = load_source(args.retain, limit=args.limit)
    control = load_source(args.control) if args.control else None
    r = audit(args.original, args.unlearned, forget, retain, Path(args.out), budget=args.budget,
              seed=args.seed, retain_drop=args.retain_drop, device=args.device,
              dtype=args.dtype, tokenizer=args.tokenizer, letter_ids=args.letter_ids,
              executor=args.executor, address=args.address, control=control)
    for line in summary_lines(r):
        print(line)
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _import_benchmarks():
    """`benchmarks.run.run_bench` and `benchmarks.report.markdown`, imported lazily: the
    benchmarks are the repository checkout's top-level `benchmarks/` package, not part of the
    installed library, so `interp bench` runs from the checkout's root (as `make bench` does)."""
    from interp.errors import InterpError

    # The `interp` console script, unlike `python -m`, does not put the working directory on
    # sys.path; when it is a checkout's root (it holds benchmarks/), put it first, so that
    # `interp bench` there imports that checkout's benchmarks. Nowhere else is sys.path touched.
    root = Path.cwd()
    if (root / "benchmarks" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from benchmarks.report import markdown
        from benchmarks.run import run_bench
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "benchmarks":
            raise
        raise InterpError("interp bench needs the benchmarks/ folder of a checkout of the interp "
                          "repository (it is not installed with the library): run it from the "
                          "checkout's root, e.g. `make bench`") from None
    return run_bench, markdown


def cmd_bench(args: argparse.Namespace) -> int:
    """`interp bench`: run the checkout's benchmarks and print their markdown report."""
    run_bench, markdown = _import_benchmarks()
    payload = run_bench(args.names or None, Path(args.out), repeats=args.repeats,
                        n_questions=args.n_questions)
    print(markdown(payload))
    print(f"-> {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder overriding the models' own "
                   "(cais/Zephyr_RMU ships only tokenizer.model: give Zephyr's)")
    p.add_argument("--letter-ids", default=None, choices=["in-context", "official"],
                   help="letter format candidates: the token that follows the scored context "
                        "(in-context, the default) or the last id of the bare letter (official, "
                        "the paper's scorer; the paper preset's default)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2",
                   help="smollm2 (embedded), a model folder, a .gguf file or a TransformerLens "
                        "model name")
    _add_device_args(p)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a local HF folder's own Python code (off by default)")


PRESET_HELP = "start from this preset's settings (default: the Config's own defaults)"


def _add_protect(sub) -> None:
    from interp.options import add_config_options
    from interp.protections.base import registry

    protect = sub.add_parser("protect", help="train a protection: "
                             + ", ".join(registry()))
    methods = protect.add_subparsers(dest="method", required=True)
    for name, module in registry().items():
        p = methods.add_parser(name, help=module.SPEC.summary)
        p.add_argument("--model", default="smollm2", help="the model to protect")
        p.add_argument("--data", required=True, help="a folder built by `interp data build`")
        p.add_argument("--out", required=True, help="output folder for the protected model")
        p.add_argument("--preset", choices=_preset_names(), default="laptop",
                       help="start from this preset's settings (default: laptop, shown below)")
        _add_device_args(p)
        add_config_options(p, module.Config, base=_base_config("protect", name, "laptop"))
        p.set_defaults(func=cmd_protect)


def _preset_names() -> list[str]:
    from interp.pipelines.presets import PRESETS

    return sorted(PRESETS)


def _add_attacks(sub) -> None:
    from interp.attacks.base import registry
    from interp.options import add_config_options

    attack = sub.add_parser("attack", help="attacks on a protected model: "
                            + ", ".join([*registry(), "compare"]))
    attacks = attack.add_subparsers(dest="attack", required=True)
    for name, module in registry().items():
        a = attacks.add_parser(name, help=module.SPEC.summary)
        a.add_argument("--model", action="append", required=True, metavar="[NAME=]SPEC",
                       help="the protected model (repeat as NAME=SPEC to attack several)")
        a.add_argument("--original", default=None,
                       help="the model before the protection" +
                            (" (required)" if module.SPEC.needs_original else ""))
        a.add_argument("--data", required=True, help="a folder built by `interp data build`")
        a.add_argument("--out", required=True, help="output folder (a finished one is read back)")
        a.add_argument("--preset", choices=_preset_names(), default=None, help=PRESET_HELP)
        _add_device_args(a)
        add_config_options(a, module.Config)
        a.set_defaults(func=cmd_attack)
    a = attacks.add_parser("compare", help="cosine of directions and Jaccard of pruned "
                           "neurons between protected models")
    a.add_argument("--directions", action="append", metavar="NAME=FOLDER",
                   help="a finished `attack directions` folder (repeat)")
    a.add_argument("--prune", action="append", metavar="NAME=FOLDER",
                   help="a finished neuron-level `attack prune` folder (repeat)")
    a.add_argument("--out", required=True)
    a.set_defaults(func=cmd_attack_compare)


def build_parser() -> argparse.ArgumentParser:
    """The `interp` command's parser; its subcommands and options come from the registry."""
    from interp.data.build import BENCHMARKS
    from interp.pipelines.presets import AUDIT_LIMITS

    parser = argparse.ArgumentParser(
        prog="interp",
        description="Is the knowledge gone, or only hidden? Attacks on unlearned models.",
    )
    parser.add_argument("--plugin", action="append", metavar="MODULE_OR_FILE",
                        help="add an attack or protection module of your own (a dotted module "
                             "name or a .py file; repeatable, anywhere on the line; the "
                             "processes a run starts load it too)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="score multiple-choice questions (the paper's scorer)")
    _add_model_args(p)
    p.add_argument("--data", required=True,
                   help="a .json/.jsonl/.parquet/.csv file in WMDP's schema, wmdp-bio, wmdp-cyber, "
                        "mmlu[:SUBJECT], bank:RELATION[:PHRASING], or RUN_OR_DATA_FOLDER:SPLIT")
    p.add_argument("--format", choices=["letter", "cloze"], default=None,
                   help="override the questions' own format")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--prefix", default=None, help="adversarial prefix (prefix + space + prompt)")
    p.add_argument("--subject", default=None, help="subject for the letter-format header")
    p.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True, help="result JSON file")
    p.set_defaults(func=cmd_eval)

    _add_protect(sub)
    _add_attacks(sub)

    p = sub.add_parser("export", help="write a model as a plain transformers folder")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=["hf", "interp"], default="hf",
                   help="hf: config.json + model.safetensors for transformers (default); "
                        "interp: the toolkit's own folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("reproduce", help="the paper end to end: benchmark, protections, every "
                       "attack, table and figures (resumable)")
    p.add_argument("--preset", choices=_preset_names(), default="laptop",
                   help="paper: Zephyr-7B against the authors' RMU, NPO and DPO models, on "
                        "WMDP-bio and WMDP-cyber (each in its own subfolder) and MMLU (GPU, hub "
                        "access)")
    p.add_argument("--out", required=True, help="run folder (a rerun skips finished cells)")
    p.add_argument("--train-protections", nargs="?", const="all", default=None,
                   metavar="METHODS",
                   help="train the protections the preset loads (all, or e.g. npo,dpo) instead "
                        "of loading the authors' models; `interp plan` says what fits")
    p.add_argument("--executor", choices=["serial", "ray"], default="serial",
                   help="ray: every cell of a stage is a Ray task (pip install -e '.[ray]')")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.add_argument("--n-devices", type=int, default=None,
                   help="spread each model's blocks over N GPUs (TransformerLens placement)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figures", default=None,
                   help="also copy the key PNG figures here (e.g. figures/)")
    _add_device_args(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("audit", help="every attack on your own (original, unlearned) pair")
    p.add_argument("--original", required=True, help="the model before unlearning")
    p.add_argument("--unlearned", required=True, help="the unlearned / safety-trained model")
    p.add_argument("--forget", required=True, help="forget questions (any --data source)")
    p.add_argument("--retain", required=True, help="retain questions (any --data source)")
    p.add_argument("--control", default=None,
                   help="your own never-known questions (any --data source); default: the "
                        "forget questions the original gets wrong, with the choices rotated")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", choices=sorted(AUDIT_LIMITS), default="quick")
    p.add_argument("--subject", default=None)
    p.add_argument("--limit", type=int, default=None, help="use only the first N of each set")
    p.add_argument("--retain-drop", type=float, default=0.10,
                   help="an attack counts if retain accuracy stays within this of the unlearned")
    p.add_argument("--seed", type=int, default=0)
    _add_device_args(p)
    p.add_argument("--executor", choices=["serial", "ray"], default="serial",
                   help="ray: every attack is a Ray task (pip install -e '.[ray]')")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("bench", help="speed against lm-eval, transformers and nanoGCG (ratios); "
                       "runs from the repository checkout's root")
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all): "
                   "scoring-vs-transformers scoring-vs-lm-eval directions generation "
                   "utilisation gcg lora rmu-step npo-step snip attention")
    p.add_argument("--out", required=True, help="result JSON (a markdown table goes beside it)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-questions", type=int, default=128)
    p.set_defaults(func=cmd_bench)

    add_plan_parser(sub, _preset_names())

    data = sub.add_parser("data", help="build the embedded benchmark")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    b = data_sub.add_parser("build", help="questions, corpora and preference data as JSONL")
    b.add_argument("--preset", choices=sorted(BENCHMARKS), default="laptop")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--model", default=None,
                   help="model whose right answers are kept (default: the preset's)")
    _add_device_args(b)
    b.set_defaults(func=cmd_data_build)
    return parser


def take_plugins(argv: list[str]) -> tuple[list[str], list[str]]:
    """`--plugin X` / `--plugin=X` anywhere in `argv`: (the plugins, the other arguments)."""
    plugins, rest = [], []
    it = iter(argv)
    for arg in it:
        if arg == "--plugin":
            plugins.append(next(it, ""))
        elif arg.startswith("--plugin="):
            plugins.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return plugins, rest


def main(argv: list[str] | None = None) -> int:
    """The `interp` command: load `--plugin`s, parse `argv` (default: `sys.argv[1:]`) and run the
    subcommand; returns the exit code (2 on an `InterpError`, 130 on Ctrl-C)."""
    from interp.errors import InterpError
    from interp.registry import register

    plugins, argv = take_plugins(sys.argv[1:] if argv is None else list(argv))
    try:  # before the parser: a plugin brings its own subcommand and options
        for entry in plugins:
            if not entry:
                raise InterpError("--plugin needs a module name or a .py file")
            register(entry)
    except InterpError as exc:
        print(f"interp: error: {exc}", file=sys.stderr)
        return 2
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
