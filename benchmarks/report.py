"""The results as a markdown table, one row per benchmark."""

from __future__ import annotations


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}"


def markdown(payload: dict) -> str:
    """The table of `payload["benchmarks"]` (rows as `run_bench` writes them): both sides, the
    ratio against its goal, and met / not met / skipped."""
    lines = ["| benchmark | ours | peer | unit | ratio (higher is better) | goal | met |",
             "|---|---|---|---|---|---|---|"]
    for b in payload["benchmarks"]:
        met = "skipped" if b["met"] is None else ("yes" if b["met"] else "no")
        lines.append(f"| {b['name']} | {_num(b['ours'])} | {_num(b['peer'])} | {b['unit']} | "
                     f"{_num(b['ratio'])} | ≥ {_num(b['goal'])} | {met} |")
    return "\n".join(lines) + "\n"
