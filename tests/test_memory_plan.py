"""The memory plan (`interp plan --card`): live bytes counted by hand, the meta device's count
against the same step run for real on the CPU, and the paper preset on an 80 GiB card."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from interp.errors import InterpError
from interp.model.memory import LiveBytes
from interp.model.shapes import shape_config
from interp.pipelines.memory_plan import (
    GiB,
    Workload,
    _fits,
    memory_plan,
    meta_model,
    step_peak,
    workloads,
)
from interp.pipelines.presets import domain_presets, get_preset, train_protections


def test_live_bytes_by_hand():
    w = torch.zeros(100)  # made before: counted only when tracked
    with LiveBytes().track(w) as mem:
        a = torch.ones(1000)  # 4,000 bytes
        b = a * 2  # 4,000 more
        del a  # freed
        c = b.view(10, 100)  # a view: the same storage, nothing new
        d = torch.ones(500, dtype=torch.float64)  # 4,000
    assert mem.peak == 400 + 4000 + 4000  # w, a and b
    assert mem.current == 400 + 4000 + 4000  # w, b (c is its view), d
    del b, c, d


def test_meta_peaks_equal_the_cpus_at_a_tiny_shape():
    """Every paper stage's step at the tiny shape (batch 2, 64 tokens): the meta device's count
    is the CPU's measured count to 0.5% (the CPU's SDPA keeps what a GPU's fused kernel keeps)."""
    from interp.pipelines.plan import _fit_to_shape

    p = _fit_to_shape(domain_presets(train_protections(get_preset("paper")))[0], 4)
    steps = [replace(w, batch=min(w.batch, 2), tokens=min(w.tokens, 64))
             for w in workloads(p, shape_config("tiny"))]
    assert {"rmu step", "npo step", "snip", "finetune (LoRA)", "gcg gradient",
            "soft_prompt"} <= {w.stage for w in steps}
    meta, cpu = meta_model("tiny", "float32"), meta_model("tiny", "float32", device="cpu")
    for w in steps:
        m, c = step_peak(meta, w), step_peak(cpu, w)
        assert abs(m - c) / c < 0.005, (w.stage, m, c)


def test_sdpa_keeps_no_scores_and_the_plan_sees_it():
    """At 1,024 tokens eager attention keeps each layer's scores and pattern for the backward
    pass; SDPA does not. Measured on the CPU and on meta, the same."""
    w = Workload("x", 1, 1024, "inputs")
    peaks = {(dev, att): step_peak(meta_model("tiny", "float32", att, device=dev), w)
             for dev in ("meta", "cpu") for att in ("eager", "sdpa")}
    cfg = shape_config("tiny")
    pattern = 1024 * 1024 * cfg["num_attention_heads"] * 4 * cfg["num_hidden_layers"]
    for dev in ("meta", "cpu"):
        assert peaks[dev, "eager"] - peaks[dev, "sdpa"] > pattern  # at least one n² per layer
    assert abs(peaks["meta", "sdpa"] - peaks["cpu", "sdpa"]) / peaks["cpu", "sdpa"] < 0.005


def test_full_parameter_npo_at_zephyr_shape_does_not_fit_80_gib():
    """bf16 weights with float32 masters, gradients and AdamW's moments: 18 bytes per trained
    weight before any activation."""
    p = domain_presets(train_protections(get_preset("paper"), "npo"))[0]
    npo = next(w for w in workloads(p, shape_config("zephyr")) if w.stage == "npo step")
    peak = step_peak(meta_model("zephyr"), npo)
    assert not _fits(peak, 80.0)
    blocks = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336)
    assert peak > 7.2e9 * 2 + blocks * 16


def test_a_stage_that_does_not_fit_says_what_would():
    plan = memory_plan(replace(get_preset("paper"), attacks={}), "tiny", 0.05, train="npo",
                       progress=False)
    npo = next(line for line in plan.lines if line.stage == "npo step")
    assert not npo.fits and not plan.all_fit
    assert "LoRA rank 128" in npo.advice and "--n-devices" in npo.advice
    assert "block subset" in npo.advice


def test_snip_at_zephyr_shape_fits_80_gib():
    """bf16 weights, float32 sums of every block matrix (4 bytes each), one gradient at a time
    and the activations of one 512-token sequence."""
    p = replace(get_preset("paper"), attacks={"prune": get_preset("paper").attacks["prune"]})
    plan = memory_plan(p, "zephyr", 80.0, progress=False)
    snip = next(line for line in plan.lines if line.stage == "snip")
    assert snip.fits and snip.peak_gib < 80
    blocks = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336)
    assert snip.peak_gib > (plan.weights_gib * GiB + blocks * 4) / GiB


def test_plan_card_on_the_command_line(tmp_path, capsys):
    from interp.cli import main

    out = tmp_path / "mem.json"
    assert main(["plan", "--shape", "tiny", "--card", "0.02", "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["card_gib"] == 0.02 and plan["lines"] and "all_fit" in plan
    assert "peak GiB" in capsys.readouterr().out
    with pytest.raises(InterpError, match="--card"):
        memory_plan("paper", "tiny", -1, progress=False)
