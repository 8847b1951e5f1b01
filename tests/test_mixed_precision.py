"""Training a bf16 or fp16 model keeps float32 master weights: updates far below a half-precision
weight's resolution are not rounded away.

The reference is float32 AdamW written out here by hand (its textbook update), fed the same
gradients; the model's copy must be the masters' rounding to its dtype.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from interp.training import TrainConfig, bytes_per_trained_param, train


def _reference_adamw(w0: torch.Tensor, grad: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """AdamW in float32 with a constant gradient, by its textbook formula (clipping is off in
    these runs): the float32 run the masters must follow."""
    w = w0.float().clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    b1, b2 = cfg.betas
    g = grad.float()
    for step in range(cfg.steps):
        lr = cfg.lr_at(step)
        w = w * (1 - lr * cfg.weight_decay)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** (step + 1))
        v_hat = v / (1 - b2 ** (step + 1))
        w = w - lr * m_hat / (v_hat.sqrt() + 1e-8)
    return w


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_training_keeps_float32_masters(dtype):
    """30 AdamW steps of lr 1e-3 on weights near 1: each update is below half a bf16 ulp of 1.0
    (2^-9 = 0.00195), so without master weights the bf16 weights never move; with them the
    masters equal float32 AdamW (1e-6 relative) and the model's copy is their rounding."""
    torch.manual_seed(0)
    w0 = (1 + torch.rand(64) * 0.5).to(dtype)  # exactly representable start
    coef = torch.tensor([(-1.0) ** i * 2.0 ** -(i % 4) for i in range(64)])  # exact in bf16/fp16
    p = torch.nn.Parameter(w0.clone())
    cfg = TrainConfig(steps=30, lr=1e-3, warmup_frac=0.0, schedule="constant",
                      max_grad_norm=None, progress=False, keep_masters=True)
    result = train([p], lambda _: (p.float() * coef).sum(), lambda s, m: None, cfg)
    if dtype == torch.float16:  # the loss scale starts at 2^16: the first scaled gradient
        assert result.skipped_steps == 1  # (65536 x 1) overflows float16, that step is skipped
    ref = _reference_adamw(w0.float(), coef, replace(cfg, steps=cfg.steps - result.skipped_steps))
    moved = (ref - w0.float()).abs().max().item()
    assert moved > 0.02  # the reference moved by many half-precision ulps
    masters = result.masters["p0"]
    assert masters.dtype == torch.float32
    assert torch.allclose(masters, ref, rtol=1e-6, atol=0)
    assert torch.equal(p.detach(), masters.to(dtype))  # the model's copy: the rounding


def test_float32_training_is_unchanged_and_keeps_no_masters():
    torch.manual_seed(0)
    w0 = 1 + torch.rand(16)
    coef = torch.linspace(-1, 1, 16)
    p = torch.nn.Parameter(w0.clone())
    cfg = TrainConfig(steps=10, lr=1e-3, warmup_frac=0.0, schedule="constant",
                      max_grad_norm=None, progress=False, keep_masters=True)
    result = train([p], lambda _: (p * coef).sum(), lambda s, m: None, cfg)
    assert result.masters == {}
    assert torch.allclose(p.detach(), _reference_adamw(w0, coef, cfg), rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_master_weights_resume_from_a_checkpoint(tmp_path, dtype):
    """A run interrupted after its step-6 checkpoint resumes from the float32 masters (the bf16
    copy alone would have lost them) and ends bitwise where the uninterrupted run ends."""
    torch.manual_seed(0)
    w0 = (1 + torch.rand(32)).to(dtype)
    coef = torch.linspace(-1, 1, 32)
    cfg = TrainConfig(steps=12, lr=1e-3, warmup_frac=0.0, schedule="constant",
                      max_grad_norm=None, progress=False, checkpoint_every=3,
                      keep_masters=True)

    def run(folder, on_step=None):
        p = torch.nn.Parameter(w0.clone())
        return train([p], lambda _: (p.float() * coef).sum(), lambda s, m: None, cfg,
                     run_dir=folder, on_step=on_step)

    whole = run(tmp_path / "whole")

    def interrupt(k):
        if k == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split", interrupt)
    resumed = run(tmp_path / "split")
    assert resumed.resumed_from == 6
    assert torch.equal(resumed.masters["p0"], whole.masters["p0"])
    assert resumed.loss_scale == whole.loss_scale  # float16: its loss scale resumes too


def test_gradient_clipping_sees_the_float32_gradients():
    """Clipping is computed on the masters' float32 gradients: a gradient of norm 8 clipped to 1
    gives the same first step as float32 AdamW with the gradient divided by 8."""
    w0 = torch.ones(4, dtype=torch.bfloat16)
    coef = torch.tensor([4.0, 4.0, 4.0, 4.0])  # norm 8
    p = torch.nn.Parameter(w0.clone())
    cfg = TrainConfig(steps=1, lr=1e-3, warmup_frac=0.0, schedule="constant",
                      max_grad_norm=1.0, progress=False, keep_masters=True)
    result = train([p], lambda _: (p.float() * coef).sum(), lambda s, m: None, cfg)
    ref = _reference_adamw(w0.float(), coef / 8, cfg)
    assert torch.allclose(result.masters["p0"], ref, rtol=1e-6)


def test_bytes_per_trained_parameter():
    assert bytes_per_trained_param(torch.float32) == 16  # weight, grad, Adam's two moments
    assert bytes_per_trained_param(torch.float64) == 32
    # half weight, float32 master, float32 gradient, two float32 moments, the half gradient
    assert bytes_per_trained_param(torch.bfloat16) == 2 + 4 + 4 + 8 + 2
    assert bytes_per_trained_param(torch.float16) == bytes_per_trained_param(torch.bfloat16)
    assert math.isclose(bytes_per_trained_param(torch.bfloat16) * 7.24e9 / 2**30, 134.85,
                        rel_tol=1e-3)


def test_a_float16_loss_scale_keeps_checking_below_one():
    """A gradient that always overflows float16 halves the scale every step, past 1.0, and every
    such step is skipped (the scale's 1.0 once meant "no scaling" and stopped the check)."""
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    cfg = TrainConfig(steps=20, lr=1e-3, warmup_frac=0.0, schedule="constant",
                      max_grad_norm=1.0, progress=False, keep_masters=True)
    result = train([p], lambda _: (p.float() * 1e6).sum(), lambda s, m: None, cfg)
    assert result.skipped_steps == 20 and result.loss_scale[0] == 2.0 ** -4
    assert torch.equal(p.detach(), torch.ones(4, dtype=torch.float16))
