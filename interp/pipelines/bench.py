"""`interp bench`: the toolkit against what a user would run instead, as ratios measured in one run.

Each benchmark runs both sides back to back in this process, `repeats` times, and reports the
median and spread of each side and `ratio`, oriented so that higher is better for us. Benchmarks
needing an optional peer (lm-evaluation-harness, nanoGCG) say "skipped" with the reason and the
command that installs it when the peer is not installed; nothing is estimated, and nothing is
installed here: `make bench-peers` sets the peers up (`make bench` does that, then runs this).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from string import Template

import torch

from interp.errors import InterpError
from interp.pipelines.bench_common import (  # noqa: F401  (re-exported)
    BenchResult,
    Context,
    _result,
    _spread,
    _timed,
)


def bench_scoring_vs_hf(ctx: Context) -> BenchResult:
    """Our scorer (hooked forward, last position unembedded) vs a bare transformers forward on
    the same left-padded batches (full logits, then the last position)."""
    from interp.scoring import EvalConfig, encode_all, evaluate, pad_left

    model, qs = ctx.model, ctx.questions
    hf = ctx.hf_model()
    enc = encode_all(model, qs, EvalConfig())
    order = sorted(range(len(enc)), key=lambda i: len(enc[i].ids))
    batches = [pad_left([enc[i].ids for i in order[s:s + ctx.batch_size]], 0, "cpu")
               for s in range(0, len(order), ctx.batch_size)]

    @torch.no_grad()
    def peer():
        preds = []
        for tokens, mask in batches:
            preds.append(hf(input_ids=tokens, attention_mask=mask).logits[:, -1].argmax(-1))
        return preds

    ours_t = _timed(lambda: evaluate(model, qs, progress=False, batch_size=ctx.batch_size),
                    ctx.repeats)
    peer_t = _timed(peer, ctx.repeats)
    ours, theirs = len(qs) / statistics.median(ours_t), len(qs) / statistics.median(peer_t)
    return _result("scoring-vs-transformers", ours, theirs, "questions/s", ours / theirs, 0.9,
                   ours_s=_spread(ours_t), peer_s=_spread(peer_t), n=len(qs))


def bench_generation(ctx: Context, new_tokens: int = 40) -> BenchResult:
    """Greedy generation with hooks (KV cache) vs HF generate, same prompt, 40 tokens."""
    from interp.prompts import chat_text
    from interp.scoring import generate_greedy

    tok = ctx.tokenizer
    ids = tok(chat_text(tok, "Write a short paragraph about the sea."),
              add_special_tokens=False)["input_ids"]
    hf = ctx.hf_model()
    hook = [("blocks.0.hook_resid_post", lambda x, hook: x)]

    def ours():
        return generate_greedy(ctx.model, [ids], max_new_tokens=new_tokens, hooks=hook)

    @torch.no_grad()
    def peer():
        return hf.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                           min_new_tokens=new_tokens, pad_token_id=tok.eos_token_id)

    ours_t, peer_t = _timed(ours, ctx.repeats), _timed(peer, ctx.repeats)
    same = ours()[0][:40] == tok.decode(peer()[0, len(ids):], skip_special_tokens=True)[:40]
    a, b = new_tokens / statistics.median(ours_t), new_tokens / statistics.median(peer_t)
    return _result("generation-vs-hf-generate", a, b, "tokens/s", a / b, 0.5,
                   ours_s=_spread(ours_t), peer_s=_spread(peer_t), same_text_prefix=same)


def _rss_child(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints JSON; add its peak RSS (MB)."""
    wrapped = (code + "\nimport resource, json as _j\n"
               "print(_j.dumps({**RESULT, 'peak_rss_mb': "
               "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    proc = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise InterpError(f"benchmark child failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


DIRECTIONS_CHILD = """
import time, torch
from interp.model.load import load_model, get_tokenizer
from interp.data.sources import load_source
from interp.attacks.directions import DirectionsConfig, diff_in_means_prompts, stream_activations
from interp.scoring import pad_left
m = load_model("smollm2", device="cpu")
tok = get_tokenizer(m)
qs = (load_source("bank:capitals:0") + load_source("bank:continents:0")
      + load_source("bank:elements:0") + load_source("bank:animals:0"))
texts = [q.question for q in qs]
texts = (texts * (1 + $n // len(texts)))[:$n]
ids = [tok(t)["input_ids"] for t in texts]
half = len(ids) // 2
cfg = DirectionsConfig(outlier_z=$outlier, batch_size=16)
@torch.no_grad()
def plain():
    for s in range(0, len(ids), 16):
        t, mk = pad_left(ids[s:s + 16], 0, "cpu")
        m(t, attention_mask=mk, return_type=None)
plain()
t0 = time.perf_counter(); plain(); t_plain = time.perf_counter() - t0
import gc, pathlib
gc.collect()
pathlib.Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
t0 = time.perf_counter(); diff_in_means_prompts(m, ids[:half], ids[half:], cfg)
t_dirs = time.perf_counter() - t0
hwm = [l for l in pathlib.Path("/proc/self/status").read_text().splitlines()
       if l.startswith("VmHWM")][0]
RESULT = {"n": $n, "plain_s": t_plain, "directions_s": t_dirs,
          "directions_peak_rss_mb": int(hwm.split()[1]) / 1024}
"""


def bench_directions(ctx: Context) -> list[BenchResult]:
    """Directions vs one plain forward over the same prompts; peak memory N=100 vs N=1000."""
    out = []
    runs = {}
    for outlier in (None, 3.0):
        for n in (100, 1000):
            code = Template(DIRECTIONS_CHILD).substitute(n=n, outlier=repr(outlier))
            runs[(outlier, n)] = _rss_child(code)
    for outlier in (None, 3.0):
        r = runs[(outlier, 1000)]
        label = "one pass" if outlier is None else "outlier drop (3 passes)"
        out.append(_result(f"directions-time-vs-forward ({label})", r["directions_s"],
                           r["plain_s"], "seconds (ratio: forward / directions)",
                           r["plain_s"] / r["directions_s"], 1 / 1.2, n=1000))
    small, big = runs[(3.0, 100)], runs[(3.0, 1000)]
    key = "directions_peak_rss_mb"  # peak while computing directions (model loaded before)
    out.append(_result("directions-memory-n1000-vs-n100", big[key], small[key],
                       "MB peak RSS while computing (ratio: N=100 / N=1000)",
                       small[key] / big[key], 1 / 1.1, runs={
                           f"{k[0]}-{k[1]}": v for k, v in runs.items()}))
    return out


def matmul_peak(repeats: int = 5, size: int = 2048) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    times = _timed(lambda: a @ b, repeats)
    return 2 * size**3 / min(times)


def bench_utilisation(ctx: Context) -> BenchResult:
    """FLOP/s of the scoring forward (2 x weights used per token + attention) vs matmul peak."""
    from interp.scoring import EvalConfig, encode_all, evaluate

    model, qs = ctx.model, ctx.questions
    cfg = model.cfg
    enc = encode_all(model, qs, EvalConfig())
    tokens = sum(len(e.ids) for e in enc)
    per_layer = 2 * (cfg.d_model * cfg.n_heads * cfg.d_head * 2
                     + cfg.d_model * (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head * 2
                     + cfg.d_model * cfg.d_mlp * (3 if cfg.gated_mlp else 2))
    mean_len = tokens / len(enc)
    attn = 4 * cfg.n_layers * cfg.d_model * mean_len  # QK^T and AV per token, causal ~ avg len
    flops = tokens * (cfg.n_layers * per_layer + attn) + len(enc) * 2 * cfg.d_model * cfg.d_vocab
    times = _timed(lambda: evaluate(model, qs, progress=False, batch_size=ctx.batch_size),
                   ctx.repeats)
    achieved = flops / statistics.median(times)
    peak = matmul_peak()
    return _result("utilisation-vs-matmul-peak", achieved / 1e9, peak / 1e9, "GFLOP/s",
                   achieved / peak, 0.5, tokens=tokens, flops=flops, ours_s=_spread(times))


def bench_lm_eval(ctx: Context) -> BenchResult:
    """Our scorer vs lm-evaluation-harness on the same model and letter-format questions."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return _result("scoring-vs-lm-eval", None, None, "questions/s", None, 2.0,
                       skipped=f"lm-eval is not installed; install it with: {LM_EVAL_INSTALL}")
    import tempfile

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from interp.scoring import evaluate

    qs = ctx.questions
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "questions.jsonl"
        data.write_text("".join(json.dumps(lm_eval_doc(q)) + "\n" for q in qs))
        (Path(tmp) / "interp_bench.yaml").write_text(lm_eval_task(data))
        lm = HFLM(pretrained=ctx.hf_model(), tokenizer=ctx.tokenizer, batch_size=ctx.batch_size)
        tm = TaskManager(include_path=tmp)

        def peer():
            return simple_evaluate(model=lm, tasks=["interp_bench"], task_manager=tm,
                                   log_samples=True, verbosity="ERROR")

        ours_t = _timed(lambda: evaluate(ctx.model, qs, fmt="letter", progress=False,
                                         batch_size=ctx.batch_size), ctx.repeats)
        peer_t = _timed(peer, ctx.repeats)
        res = peer()
        theirs = [max(range(4), key=lambda i: s["resps"][i][0][0]) for s in
                  sorted(res["samples"]["interp_bench"], key=lambda s: s["doc_id"])]
        ours_pred = evaluate(ctx.model, qs, fmt="letter", progress=False).preds.tolist()
    a, b = len(qs) / statistics.median(ours_t), len(qs) / statistics.median(peer_t)
    agree = sum(x == y for x, y in zip(ours_pred, theirs)) / len(qs)
    return _result("scoring-vs-lm-eval", a, b, "questions/s", a / b, 2.0,
                   ours_s=_spread(ours_t), peer_s=_spread(peer_t), same_predictions=agree)


LM_EVAL_TEXT = ("The following are multiple choice questions (with answers) about "
                "{{subject}}.\n\n{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\n"
                "C. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:")


def lm_eval_doc(q) -> dict:
    """One question as the harness task reads it (the subject as our prompt names it)."""
    return {"question": q.question, "choices": list(q.choices), "answer": q.answer,
            "subject": q.subject or "general knowledge"}


def lm_eval_task(path: Path) -> str:
    """A local harness task over a WMDP-schema JSONL file, prompted exactly as our scorer."""
    return "\n".join([
        "task: interp_bench", "dataset_path: json", "dataset_kwargs:", "  data_files:",
        f"    test: {json.dumps(str(path))}", "test_split: test",
        "output_type: multiple_choice", f"doc_to_text: {json.dumps(LM_EVAL_TEXT)}",
        'doc_to_choice: ["A", "B", "C", "D"]', "doc_to_target: answer", "metric_list:",
        "  - metric: acc", ""])


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

NANOGCG_REQS = ["nanogcg==0.3.0", "transformers==4.47.1", "torch==2.13.0", "gguf", "numpy<3",
                "accelerate"]  # transformers 4.47 loads GGUF files only with accelerate
# The one list of nanoGCG's requirements: `make bench-peers` reads it from here.

NANOGCG_ENV = "INTERP_NANOGCG_PYTHON"  # the interpreter of an environment where nanoGCG imports
NANOGCG_VENV = ".venv-nanogcg"  # else this environment, relative to the working directory
LM_EVAL_INSTALL = "make bench-peers (or: pip install -e '.[bench]')"


def nanogcg_install_command() -> str:
    """What sets up nanoGCG's own environment (nanoGCG pins transformers <= 4.47.1, so it cannot
    share ours): `make bench-peers`, or the same thing spelled out."""
    reqs = " ".join(shlex.quote(r) for r in NANOGCG_REQS)
    return (f"make bench-peers (or: python3 -m venv {NANOGCG_VENV} && "
            f"{NANOGCG_VENV}/bin/pip install {reqs})")


def _imports_nanogcg(py: str) -> bool:
    try:
        proc = subprocess.run([py, "-c", "import nanogcg"], capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def find_nanogcg() -> tuple[str | None, str]:
    """nanoGCG's interpreter and, when there is none, why. Looks at $INTERP_NANOGCG_PYTHON, else
    .venv-nanogcg/bin/python in the working directory, and checks that it imports nanogcg.
    Never creates an environment or installs anything."""
    given = os.environ.get(NANOGCG_ENV)
    if given:
        py, where = shutil.which(given) or given, f"{NANOGCG_ENV}={given}"
    else:
        py = str(Path.cwd() / NANOGCG_VENV / "bin" / "python")  # not resolved: keep the venv
        where = f"{NANOGCG_VENV}/bin/python"
    if not Path(py).is_file():
        return None, f"nanoGCG's environment is not set up (no {where})"
    if not _imports_nanogcg(py):
        return None, f"{where} cannot import nanogcg"
    return py, ""


def nanogcg_python() -> str | None:
    """The interpreter that runs nanoGCG, or None when it is not set up (see find_nanogcg)."""
    return find_nanogcg()[0]


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
        return _result("gcg-vs-nanogcg", ours_cps, None, "candidates/s", None, 2.0,
                       skipped=f"{why}; install it with: {nanogcg_install_command()}",
                       ours_losses=ours.losses)
    target = " " + q.choices[q.answer].strip()
    args = json.dumps([str(embedded_gguf_path()), "{optim_str} " + q.question, target.strip(),
                       steps, width, topk, n_tokens])
    child = NANOGCG_CHILD.replace("THREADS", str(torch.get_num_threads()))
    proc = subprocess.run([py, "-c", child, args], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return _result("gcg-vs-nanogcg", ours_cps, None, "candidates/s", None, 2.0,
                       skipped=f"nanoGCG ({py}) failed: {last[:200]}", ours_losses=ours.losses)
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    peer_cps = steps * width / theirs["seconds"]
    return _result("gcg-vs-nanogcg", ours_cps, peer_cps, "candidates/s", ours_cps / peer_cps,
                   2.0, ours_losses=ours.losses, peer_losses=theirs["losses"],
                   steps=steps, search_width=width, topk=topk)


from interp.pipelines import bench_training  # noqa: E402

BENCHMARKS = {
    "scoring-vs-transformers": bench_scoring_vs_hf,
    "scoring-vs-lm-eval": bench_lm_eval,
    "directions": bench_directions,
    "generation": bench_generation,
    "utilisation": bench_utilisation,
    "gcg": bench_gcg,
    "lora": bench_training.bench_lora_vs_peft,
    "rmu-step": bench_training.bench_rmu_step,
    "npo-step": bench_training.bench_npo_step,
    "snip": bench_training.bench_snip,
}


def run_bench(names: list[str] | None, out: Path, repeats: int = 3, n_questions: int = 128,
              progress: bool = True) -> dict:
    from interp.data.sources import load_source
    from interp.model.load import load_model
    from interp.store import atomic_write_text, check_writable, write_json

    names = names or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise InterpError(f"unknown benchmark(s) {sorted(unknown)}; use {sorted(BENCHMARKS)}")
    out = Path(out)
    check_writable(out)
    model = load_model("smollm2", device="cpu")
    qs = (load_source("bank:capitals:1") + load_source("bank:elements:1"))[:n_questions]
    ctx = Context(model, qs, repeats)
    results: list[BenchResult] = []
    for name in names:
        if progress:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
        r = BENCHMARKS[name](ctx)
        results += r if isinstance(r, list) else [r]
    payload = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "torch": torch.__version__, "python": platform.python_version()},
               "repeats": repeats, "n_questions": len(qs),
               "benchmarks": [asdict(r) for r in results]}
    write_json(out, payload)
    atomic_write_text(out.with_suffix(".md"), markdown(payload))
    return payload


def _num(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def markdown(payload: dict) -> str:
    lines = ["| benchmark | ours | peer | unit | ratio (higher is better) | goal | met |",
             "|---|---|---|---|---|---|---|"]
    for b in payload["benchmarks"]:
        met = "skipped" if b["met"] is None else ("yes" if b["met"] else "no")
        lines.append(f"| {b['name']} | {_num(b['ours'])} | {_num(b['peer'])} | {b['unit']} | "
                     f"{_num(b['ratio'])} | ≥ {_num(b['goal'])} | {met} |")
    return "\n".join(lines) + "\n"
