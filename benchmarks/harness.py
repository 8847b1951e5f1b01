"""Our scorer against lm-evaluation-harness on the same model and letter-format questions, the
harness reading them through a local task prompted exactly as our scorer prompts."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.common import BenchResult, Context, row, spread, timed

LM_EVAL_INSTALL = "make bench-peers (or: pip install -e '.[bench]')"

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


def bench_lm_eval(ctx: Context) -> BenchResult:
    """Our scorer vs lm-evaluation-harness on the same model and letter-format questions;
    skipped, with the command that installs the harness, when it is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return row("scoring-vs-lm-eval", None, None, "questions/s", None, 2.0,
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

        ours_t = timed(lambda: evaluate(ctx.model, qs, fmt="letter", progress=False,
                                        batch_size=ctx.batch_size), ctx.repeats)
        peer_t = timed(peer, ctx.repeats)
        res = peer()
        theirs = [max(range(4), key=lambda i: s["resps"][i][0][0]) for s in
                  sorted(res["samples"]["interp_bench"], key=lambda s: s["doc_id"])]
        ours_pred = evaluate(ctx.model, qs, fmt="letter", progress=False).preds.tolist()
    a, b = len(qs) / statistics.median(ours_t), len(qs) / statistics.median(peer_t)
    agree = sum(x == y for x, y in zip(ours_pred, theirs)) / len(qs)
    return row("scoring-vs-lm-eval", a, b, "questions/s", a / b, 2.0,
               ours_s=spread(ours_t), peer_s=spread(peer_t), same_predictions=agree)
