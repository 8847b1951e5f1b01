"""Results every protection and attack shares: rows of the results table, a typed `Result` that
writes and reads itself (JSON) and its figures, and the resumable result folder."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import KW_ONLY, asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from interp.stats import wilson
from interp.store import read_json, write_json

RESULT_JSON = "result.json"


@dataclass(frozen=True, kw_only=True)
class Row:
    """One measurement: accuracy of `model` after `attack` on a split, in a format and mode."""

    model: str
    attack: str
    split: str
    format: str
    mode: str
    accuracy: float
    n: int
    column: str | None = None  # the results table's column this row fills (None: not shown)
    note: str | None = None  # shown beside the number in the table: a layer, a pruned share
    # the same attack's accuracy on the validation split (where its choices were made; the
    # audit picks its best attack by it); `accuracy` is on the test split
    val: float | None = None
    n_val: int | None = None
    # per question, "1" right / "0" wrong, over the first `n` questions of the data folder's
    # `questions` file (e.g. "forget_test"): what the entity bootstrap and the paired tests read
    correct: str | None = None
    questions: str | None = None
    # the attack whose "original" row is the original's accuracy for the recovered share (a
    # rephrased stem: the original on that stem); None: the original's no-attack row
    reference: str | None = None
    # set by `interp.pipelines.controls.annotate` from the rows of the same run
    interval: tuple[float, float] | None = None  # 95% entity-bootstrap interval (else Wilson)
    recovered: float | None = None  # (attacked - unlearned) / (original - unlearned), test
    recovered_ci: tuple[float, float] | None = None
    d_control: float | None = None  # control accuracy after the attack minus before it
    supplied: bool | None = None  # † : control above the original's, paired test, and chance

    @property
    def ci(self) -> tuple[float, float]:
        """The 95% interval of `accuracy`: the entity bootstrap's where set, else Wilson's over
        `n` questions."""
        return tuple(self.interval) if self.interval is not None else wilson(self.accuracy, self.n)

    def to_json(self) -> dict:
        """The row as a JSON object with its 95% interval (`ci`); unset optional fields left out."""
        row = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
               if v is not None or k in REQUIRED}
        row.pop("interval", None)
        return {**row, "ci": list(self.ci),
                "ci_kind": "entity bootstrap" if self.interval is not None else "wilson"}


REQUIRED = ("model", "attack", "split", "format", "mode", "accuracy", "n")


def bits(correct) -> str:
    """Per-question correctness (a bool tensor or sequence) as a "0"/"1" string."""
    values = correct.tolist() if hasattr(correct, "tolist") else correct
    return "".join("1" if v else "0" for v in values)


@dataclass
class Scores:
    """Forget and retain accuracy of one attacked model, and where measured its control accuracy
    and the per-question correctness of forget and control (`bits`)."""

    forget: float
    retain: float
    _: KW_ONLY  # positional: forget, retain (and a subclass's counts)
    control: float | None = None
    n_control: int = 0
    forget_correct: str | None = None
    control_correct: str | None = None


@dataclass
class Measured(Scores):
    """Forget and retain accuracy, and how many questions each was on."""

    n_forget: int = 0
    n_retain: int = 0


@dataclass
class Baseline(Measured):
    """Forget and retain accuracy before the attack (no attack), with their question counts."""


def score_rows(model: str, attack: str, scores: Scores, base: Baseline, fmt: str,
               column: str | None = None, note: str | None = None,
               val: Measured | None = None, mode: str = "raw", forget_split: str = "forget"
               ) -> list[Row]:
    """The forget, retain and (where measured) control rows of one attacked model (the forget one
    fills `column`); `val`: the same attack's scores on the validation split."""
    vf, vr, nf, nr = ((val.forget, val.retain, val.n_forget, val.n_retain) if val is not None
                      else (None, None, None, None))
    rows = [Row(model=model, attack=attack, split=forget_split, format=fmt, mode=mode,
                accuracy=scores.forget, n=base.n_forget, column=column, note=note, val=vf,
                n_val=nf, correct=scores.forget_correct,
                questions="forget_test" if scores.forget_correct else None)]
    if not math.isnan(scores.retain):  # NaN: retain not scored (a placebo), no row
        rows.append(Row(model=model, attack=attack, split="retain", format=fmt, mode=mode,
                        accuracy=scores.retain, n=base.n_retain, val=vr, n_val=nr))
    if scores.control is not None:
        rows.append(control_row(model, attack, scores, fmt, mode,
                                val.control if val is not None else None,
                                val.n_control if val is not None else None))
    return rows


def control_row(model: str, attack: str, scores: Scores, fmt: str, mode: str = "raw",
                val: float | None = None, n_val: int | None = None) -> Row:
    """The control row of one attacked model (`interp.data.control`)."""
    return Row(model=model, attack=attack, split="control", format=fmt, mode=mode,
               accuracy=scores.control, n=scores.n_control, correct=scores.control_correct,
               questions="control_test", val=val, n_val=n_val or None)


# ------------------------------------------------------------------------------- JSON round trip
def not_saved():
    """A result field kept in memory only (tensors), not written to result.json."""
    return dataclasses.field(default=None, repr=False, compare=False,
                             metadata={"json": False})


def to_jsonable(obj: Any) -> Any:
    """`obj` as plain JSON: dataclasses (less their `not_saved` fields) as objects, tuples as lists,
    paths as strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.metadata.get("json", True)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_jsonable(tp: Any, value: Any) -> Any:
    """Rebuild `value` (plain JSON) as type `tp`: dataclasses, lists, tuples and dicts of them."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return from_jsonable(args[0], value) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        return tp(**{k: from_jsonable(hints[k], v) for k, v in value.items() if k in names})
    if origin in (list, tuple):
        args = typing.get_args(tp)
        item = args[0] if args else Any
        seq = [from_jsonable(item, v) for v in value]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        _, item = typing.get_args(tp) or (Any, Any)
        return {k: from_jsonable(item, v) for k, v in value.items()}
    return value


class Result:
    """Shared behaviour of attack and protection results (mixed into their dataclasses)."""

    figures: list[str]  # file names of the written figures, relative to the result's folder

    def to_json(self) -> dict:
        """The result as plain JSON (fields made with `not_saved` left out)."""
        return to_jsonable(self)

    # fields an older result.json wrote under another name (old -> new), read under the new one
    renamed: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_json(cls, data: dict):
        """The result from its `to_json()` form (fields in `renamed` read under their new names)."""
        data = {cls.renamed.get(k, k): v for k, v in data.items()}
        return from_jsonable(cls, data)

    def rows(self, model: str) -> list[Row]:
        """The results-table rows this result contributes for `model` (none by default)."""
        return []

    def plot(self):
        """The result's main figure: a plotly `Figure` (None: no figure); each result class
        defines it."""
        raise NotImplementedError(f"{type(self).__name__} has no figure")

    def extra_figures(self) -> dict:
        """Figures beyond `plot()`, by file stem."""
        return {}

    figure_stem: ClassVar[str] = "figure"


def finished(result_cls: type, out: Path | None, name: str = RESULT_JSON):
    """The result written in `out` earlier, or None (no folder given, or not finished)."""
    if out is None or not (Path(out) / name).is_file():
        return None
    return result_cls.from_json(read_json(Path(out) / name))


def save(result: Result, out: Path | None, name: str = RESULT_JSON):
    """Write the result's figures and then `result.json` (last: its presence marks the run
    finished). Without a folder, nothing is written."""
    from interp.plots import save_figure

    if out is None:
        return result
    out = Path(out)
    figs = {result.figure_stem: result.plot(), **result.extra_figures()}
    written = []
    for stem, fig in figs.items():
        if fig is not None:
            written += [p.name for p in save_figure(fig, out / stem)]
    result.figures = written
    write_json(out / name, result.to_json())
    return result
