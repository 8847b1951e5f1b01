"""What every protection shares: the registry, the measurements before and after training, and
the result every method returns.

A protection is one module of `interp.protections` holding `Config`, `train(model, data, cfg,
run_dir, progress) -> (losses, extras)` (the method itself, in place), `run(model, data, cfg=None,
*, out=None, ...) -> Result` and `SPEC`. `run` measures the model before and after, and with `out`
saves the protected model (loadable by `load_model(out)`) and `protection.json`; a finished folder
is read back, not trained again (load the protected model from it), and an interrupted training
resumes from its checkpoint.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from transformer_lens import HookedTransformer

from interp import results as base
from interp.data.folder import as_data
from interp.model.load import MODEL_JSON, get_tokenizer, save_model
from interp.prompts import chat_text
from interp.registry import REGISTRIES
from interp.results import Row, bits
from interp.score_cache import recording, save_scores
from interp.scoring import evaluate, generate_greedy

REPORT_JSON = "protection.json"
REFUSAL = re.compile(r"(sorry|can't|cannot|can not|unable|not able|won't|I'm afraid)", re.I)
LETTER_LIMIT = 100  # the letter format is at chance for small models: a sample suffices


@dataclass(frozen=True)
class ProtectionSpec:
    """What the pipelines need to know of a protection: its place and its settings."""

    name: str
    order: int
    summary: str = ""
    # the protection's `Config` in each preset of `interp reproduce` (a preset it is missing from
    # does not train it)
    presets: Mapping[str, Any] = field(default_factory=dict)
    # what it trains on: "corpus" (texts about the forget facts, as RMU's activation steering) or
    # "answers" (questions and answers, as NPO and DPO); the paper's SNIP recipe follows it
    trains_on: str = "answers"
    kind: ClassVar[str] = "protection"


@dataclass
class Measure:
    """One accuracy measurement and the number of questions it is on."""

    accuracy: float
    n: int
    correct: str | None = None  # per question (`interp.results.bits`), test forget and control


@dataclass
class ProtectionResult(base.Result):
    """Accuracy before and after, keyed "split/format/mode" (e.g. "forget/cloze/raw"), and the
    training losses. Each method's `Result` adds its `config` and what else it measured."""

    method: str
    before: dict[str, Measure]
    after: dict[str, Measure]
    losses: list[float]
    train_seconds: float
    model: str = ""  # what was protected, when known by name
    data: str = ""
    preset: str = ""
    figures: list[str] = field(default_factory=list)
    encoding: dict = field(default_factory=dict)  # rows kept / cut / dropped at max_len
    figure_stem: ClassVar[str] = "losses"

    def rows(self, model: str) -> list[Row]:
        """The protected model's no-attack rows (the accuracy after training)."""
        return measure_rows(model, self.after)

    def rows_before(self, model: str = "original") -> list[Row]:
        """The unprotected model's rows (the accuracy before training), under the name `model`."""
        return measure_rows(model, self.before)

    def plot(self):
        """The training loss per optimizer step."""
        import plotly.graph_objects as go

        fig = go.Figure(go.Scatter(x=list(range(1, len(self.losses) + 1)), y=self.losses,
                                   mode="lines", name="loss"))
        fig.update_layout(title=f"{self.method.upper()} training loss", xaxis_title="step",
                          yaxis_title="loss", template="plotly_white")
        return fig


def measure_rows(model: str, measures: dict[str, Measure]) -> list[Row]:
    """The no-attack rows; the main format's raw rows fill the "forget" and "retain" columns,
    the other forget rows a column of their own (e.g. "letter chat")."""
    main = next((k.split("/")[1] for k in measures if k.startswith("forget/") and
                 k.endswith("/raw")), None)
    rows = []
    for key, m in measures.items():
        split, fmt, mode = key.split("/")
        column = (split if (fmt, mode) == (main, "raw")
                  else f"{fmt} {mode}" if split == "forget" else None)
        rows.append(Row(model=model, attack="none", split=split, format=fmt, mode=mode,
                        accuracy=m.accuracy, n=m.n, column=column, correct=m.correct,
                        questions=f"{split}_test" if m.correct else None))
    return rows


# -------------------------------------------------------------------------------- measurements
def measure(model: HookedTransformer, data, progress: bool = False) -> dict[str, Measure]:
    """Forget/retain accuracy: the eval sets in their own format (raw; WMDP-style letter sets
    also in chat), and the letter format raw and chat on the first `LETTER_LIMIT` questions of
    the `*_test_letter` sets when the data has them; the never-known control (`control_test`)
    as the forget set is scored."""
    data = as_data(data)
    out: dict[str, Measure] = {}
    for split in ("forget", "retain", "control"):
        for name, fmt_modes in ((f"{split}_test", ((None, False),)),
                                (f"{split}_test_letter", (("letter", False), ("letter", True)))):
            if not data.has(name) or (split == "control" and "letter" in name):
                continue
            questions = data.questions(name, limit=LETTER_LIMIT if "letter" in name else None)
            if name.endswith("_test") and questions[0].format == "letter":
                fmt_modes = ((None, False), (None, True))  # WMDP-style sets: raw and chat
            elif name.endswith("_letter") and f"{split}/letter/raw" in out:
                continue  # the eval set itself is in the letter format
            for fmt, chat in fmt_modes:
                res = evaluate(model, questions, chat=chat, fmt=fmt, progress=progress,
                               batch_size=32)
                key = f"{split}/{fmt or questions[0].format}/{'chat' if chat else 'raw'}"
                keep = split != "retain" and name.endswith("_test")
                out[key] = Measure(res.accuracy, res.n, bits(res.correct) if keep else None)
    return out


def refusal_rate(model: HookedTransformer, data, limit: int = 64) -> dict:
    """Greedy chat answers to forget questions, and how many of them refuse."""
    questions = as_data(data).questions("forget_test")[:limit]
    tok = get_tokenizer(model)
    prompts = [tok(chat_text(tok, q.question), add_special_tokens=False)["input_ids"]
               for q in questions]
    answers = generate_greedy(model, prompts, max_new_tokens=20)
    refused = [bool(REFUSAL.search(a)) for a in answers]
    return {"refusal_rate": sum(refused) / len(refused), "n": len(refused),
            "examples": [{"prompt": q.question, "answer": a} for q, a in
                         zip(questions[:5], answers[:5])]}


def forget_outputs(model: HookedTransformer, data, n: int = 5) -> list[dict]:
    """The model's raw continuations of forget prompts (RMU: the paper saw gibberish)."""
    questions = as_data(data).questions("forget_test")[:n]
    tok = get_tokenizer(model)
    answers = generate_greedy(model, [tok(q.question)["input_ids"] for q in questions],
                              max_new_tokens=16)
    return [{"prompt": q.question, "output": a} for q, a in zip(questions, answers)]


# ------------------------------------------------------------------------------------ the runner
Train = Callable[..., tuple[list[float], dict]]


def finished_protection(result_cls: type, out: Path | None):
    """The report of a protection saved in `out` earlier (model and report), or None."""
    if out is None or not (Path(out) / MODEL_JSON).is_file():
        return None
    return base.finished(result_cls, out, REPORT_JSON)


def train_and_measure(model: HookedTransformer, data, cfg, train: Train, result_cls: type, *,
            out: Path | None = None, progress: bool = True,
            before: dict[str, Measure] | None = None, about: dict | None = None):
    """Measure, train in place, measure again; with `out`, save the model and the report."""
    if (done := finished_protection(result_cls, out)) is not None:
        return done
    data = as_data(data)
    method = result_cls.method_name
    before = before if before is not None else measure(model, data)
    start = time.perf_counter()
    run_dir = Path(out) / "train" if out is not None else None
    losses, extras = train(model, data, cfg, run_dir=run_dir, progress=progress)
    seconds = time.perf_counter() - start
    with recording() as kept:  # the protected model's scores, kept for every attack's baseline
        after = measure(model, data)
        for split in ("forget_val", "retain_val", "control_val"):
            if data.has(split):
                evaluate(model, data.questions(split), progress=False, batch_size=32)
    result = result_cls(method=method, before=before, after=after, losses=losses,
                        train_seconds=round(seconds, 1), config=cfg, **(about or {}), **extras)
    if out is not None:
        save_model(model, out, meta={"protection": method, "config": asdict(cfg)})
        save_scores(out, kept)
        base.save(result, out, REPORT_JSON)
    return result


# ---------------------------------------------------------------------------------- registry
def registry() -> dict:
    """Every protection module (name -> module), in order (`interp.registry`)."""
    return REGISTRIES["protection"].modules()


def get(name: str):
    """The protection module named `name`."""
    return REGISTRIES["protection"].get(name)
