"""The one prepared GPU check (`scripts/gpu_check.sh`): what a lent H100/H200 should confirm, in
one JSON file, written again after every part so an interrupted check keeps what it measured.

1. `smoke`: the smoke reproduction on `--device`, its rows compared with a CPU run's (a given
   `--reference` results.json, else one computed here first): per row the accuracy difference;
   rows within `--tolerance` (default 0.05, about one question in twenty: training on another
   device rounds differently, so the protected models and every row after them differ a little).
2. `plan`: the memory plan of the paper preset at `--shape` (Zephyr's by default) in bf16 for
   this card (meta device).
3. `memory`: the plan's meta count against the device's own measure (CUDA's allocator peak; on a
   CPU, live tensor bytes) for the same steps on a random-weight model of `--shape` in bf16.
4. `sdpa`: the SDPA-equals-eager tests run on `--device`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEMORY_STAGES = ("score", "snip", "gcg gradient", "finetune (LoRA)", "soft_prompt")


def compare_rows(ours: list[dict], reference: list[dict], tolerance: float) -> dict:
    """Rows matched on (model, attack, split, format, mode, column, questions): how many, how
    many within `tolerance` of the reference's accuracy, the largest difference and the worst
    rows."""
    key = lambda r: (r["model"], r["attack"], r["split"], r.get("format"), r.get("mode"),  # noqa: E731
                     r.get("column"), r.get("questions"))
    ref = {key(r): r["accuracy"] for r in reference}
    diffs = sorted(((abs(r["accuracy"] - ref[key(r)]), key(r)) for r in ours if key(r) in ref),
                   key=lambda d: d[0], reverse=True)  # keys may hold None: sort on the numbers
    return {"rows": len(ours), "matched": len(diffs), "reference_rows": len(reference),
            "within_tolerance": sum(d <= tolerance for d, _ in diffs), "tolerance": tolerance,
            "max_abs_difference": diffs[0][0] if diffs else None,
            "worst": [{"row": list(k), "difference": d} for d, k in diffs[:5]]}


def smoke(device: str, work: Path, reference: Path | None, tolerance: float) -> dict:
    """The smoke reproduction on `device` against a CPU run's rows (computed first if none)."""
    from interp.pipelines.reproduce import reproduce

    start = time.perf_counter()
    if reference is None:
        reproduce("smoke", work / "smoke-cpu", device="cpu", progress=False)
        reference = work / "smoke-cpu" / "results.json"
    ref_seconds = time.perf_counter() - start
    start = time.perf_counter()
    summary = reproduce("smoke", work / f"smoke-{device.replace(':', '')}", device=device,
                        progress=False)
    return {"device": device, "seconds": round(time.perf_counter() - start, 1),
            "reference": str(reference), "reference_seconds": round(ref_seconds, 1),
            **compare_rows(summary["rows"], json.loads(Path(reference).read_text())["rows"],
                           tolerance)}


def plan(card: float, shape: str) -> dict:
    """The paper preset's memory plan for a `card` GiB card at `shape` (meta device)."""
    from interp.pipelines.memory_plan import memory_lines, memory_plan

    start = time.perf_counter()
    result = memory_plan("paper", shape, card, progress=False)
    return {"seconds": round(time.perf_counter() - start, 1), "text": memory_lines(result),
            **result.to_json()}


def memory(device: str, shape: str) -> dict:
    """Each step's peak: the meta count, and the device's measure of the same step."""
    import torch

    from interp.model.shapes import shape_config
    from interp.pipelines.memory_plan import meta_model, step_peak, workloads
    from interp.pipelines.presets import domain_presets, get_preset

    start = time.perf_counter()
    p = domain_presets(get_preset("paper"))[0]
    # one model, no analytic additions: the same tensors on both sides
    steps = [replace(w, models=1, lora_params=0) for w in workloads(p, shape_config(shape))
             if w.stage in MEMORY_STAGES]
    meta = meta_model(shape, "bfloat16")
    real = meta_model(shape, "bfloat16", device=device)
    out = []
    for w in steps:
        projected = step_peak(meta, w)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            counted = step_peak(real, w)
            torch.cuda.synchronize()
            measured, how = torch.cuda.max_memory_allocated(), "CUDA allocator peak"
        else:
            measured = counted = step_peak(real, w)
            how = "live tensor bytes (a CPU has no allocator peak)"
        out.append({"stage": w.stage, "batch": w.batch, "tokens": w.tokens,
                    "projected_gib": round(projected / 2**30, 3),
                    "counted_gib": round(counted / 2**30, 3),
                    "measured_gib": round(measured / 2**30, 3),
                    "measured_over_projected": round(measured / projected, 4), "measure": how})
    del real
    return {"shape": shape, "seconds": round(time.perf_counter() - start, 1), "steps": out}


def sdpa(device: str) -> dict:
    """tests/test_sdpa_attention.py on `device`: its return code and summary line."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_sdpa_attention.py")],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "INTERP_TEST_DEVICE": device})
    tail = proc.stdout.strip().splitlines()[-1:] or [proc.stderr.strip()[-300:]]
    return {"device": device, "returncode": proc.returncode, "summary": tail[0],
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    """Run the parts, writing the JSON after each; 1 if any part failed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="zephyr", help="the plan's and memory check's model shape")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--work", default=None,
                    help="folder for the smoke runs (default: beside --out)")
    ap.add_argument("--reference", default=None, help="a CPU smoke run's results.json")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--card", type=float, default=None,
                    help="GiB to plan for (default: the device's memory, else 80)")
    ap.add_argument("--parts", default="smoke,plan,memory,sdpa")
    args = ap.parse_args(argv)

    import torch

    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / "gpu_check_runs"
    work.mkdir(parents=True, exist_ok=True)
    card = args.card
    if card is None:
        card = (torch.cuda.get_device_properties(0).total_memory / 2**30
                if args.device.startswith("cuda") and torch.cuda.is_available() else 80.0)
    report = {"device": args.device, "shape": args.shape, "card_gib": round(card, 1),
              "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "parts": {}}
    start = time.perf_counter()
    parts = {"smoke": lambda: smoke(args.device, work, Path(args.reference) if args.reference
                                    else None, args.tolerance),
             "plan": lambda: plan(card, args.shape),
             "memory": lambda: memory(args.device, args.shape),
             "sdpa": lambda: sdpa(args.device)}
    failed = False
    for name in args.parts.split(","):
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        try:
            report["parts"][name] = parts[name]()
        except Exception as exc:  # one part failing keeps the others' results
            failed = True
            report["parts"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        report["seconds"] = round(time.perf_counter() - start, 1)
        out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v.get("error", "ok") for k, v in report["parts"].items()}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
