"""The 95% Wilson interval against published values and its place in every reported row."""

from __future__ import annotations

import pytest

from interp.results import Row
from interp.stats import overlaps, wilson


@pytest.mark.parametrize("k,n,low,high", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), example (a)
    (15, 148, 0.0624, 0.1605),  # example (b)
])
def test_wilson_against_published_values(k, n, low, high):
    lo, hi = wilson(k / n, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_is_a_proper_interval_and_narrows_with_n():
    for n in (1, 7, 50, 400):
        for k in range(0, n + 1, max(1, n // 7)):
            lo, hi = wilson(k / n, n)
            assert 0 <= lo <= k / n <= hi <= 1
    assert wilson(0.5, 400)[1] - wilson(0.5, 400)[0] < wilson(0.5, 40)[1] - wilson(0.5, 40)[0]
    assert wilson(0.5, 0) == (0.0, 1.0)


def test_rows_carry_their_interval_and_overlap_is_symmetric():
    row = Row(model="rmu", attack="orthogonalize", split="forget", format="cloze", mode="raw",
              accuracy=0.685, n=200)
    data = row.to_json()
    assert data["ci"] == list(wilson(0.685, 200))
    assert data["ci"][0] < 0.685 < data["ci"][1]
    assert overlaps((0.1, 0.3), (0.25, 0.5)) and overlaps((0.25, 0.5), (0.1, 0.3))
    assert not overlaps((0.1, 0.2), (0.3, 0.4))


def test_table_marks_an_attack_whose_interval_overlaps_no_attack():
    from interp.pipelines.report import OVERLAP, make_table

    def row(attack, split, accuracy, n, column=None):
        return Row(model="rmu", attack=attack, split=split, format="cloze", mode="raw",
                   accuracy=accuracy, n=n, column=column)

    rows = [row("none", "forget", 0.30, 50, "forget"), row("prune", "forget", 0.36, 50, "prune"),
            row("orthogonalize", "forget", 0.80, 50, "orthogonalize"),
            row("gcg-none", "forget-heldout", 0.10, 40),
            row("gcg", "forget-heldout", 0.40, 40, "GCG raw")]
    columns, (entry, *below) = make_table(rows, ["rmu"])
    assert [b["model"] for b in below] == ["rmu: Δforget / Δcontrol"]  # no share without bits
    assert columns == ["forget", "prune", "orthogonalize", "GCG raw"]
    assert entry["prune"].endswith(OVERLAP) and OVERLAP not in entry["orthogonalize"]
    assert OVERLAP not in entry["GCG raw"]  # compared with its own no-prefix row (10%)
    assert OVERLAP not in entry["forget"]
    assert entry["orthogonalize"].startswith("80.0 [")
