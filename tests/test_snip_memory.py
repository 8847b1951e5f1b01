"""SNIP at 7B memory: float32 sums filled by post-accumulate-grad hooks (one gradient alive at a
time), scores on the host or in per-matrix files, against an independent float64 reference."""

from __future__ import annotations

import pytest
import torch

from interp.attacks import snip
from interp.attacks.prune import (
    ScoreFiles,
    Thresholds,
    neuron_scores,
    snip_memory_bytes,
    snip_scores,
)
from interp.model.hooks import block_weight_names
from interp.model.load import get_tokenizer
from interp.model.state import copy_model
from interp.training import fixed_threads, lm_loss, pack

TEXTS = ["The capital of France is Paris.", "Gold has the symbol Au and is a metal.",
         "A dolphin is a mammal that lives in the sea.", "Hot is the opposite of cold.",
         "Water boils at one hundred degrees.", "The moon goes around the earth."]


def _batches(model, texts=TEXTS, size=2):
    tok = get_tokenizer(model)
    seqs = [tok(t)["input_ids"] for t in texts]
    return [pack(seqs[i:i + size], [3] * len(seqs[i:i + size]), 0, "cpu")
            for i in range(0, len(seqs), size)]


def _as(model, dtype):
    m = copy_model(model).to(dtype)
    m.cfg.dtype = dtype
    return m


def _reference(model, batches, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Independent: a copy in `dtype` (float64: a float64 model; float32: the model's own
    gradients), plain autograd per batch, |grad| summed in float64, times |W| in float64."""
    m = _as(model, dtype)
    m.eval()
    names = block_weight_names(m)
    params = dict(m.named_parameters())
    for p in m.parameters():
        p.requires_grad_(True)
    sums = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    with fixed_threads():  # the thread count snip_scores computes gradients with
        for batch in batches:
            grads = torch.autograd.grad(lm_loss(m, batch), [params[n] for n in names])
            for n, g in zip(names, grads):
                sums[n] += g.double().abs()
    return {n: params[n].detach().double().abs() * sums[n] for n in names}


def _no_post_hooks(model) -> bool:
    return all(not getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters())


@pytest.fixture(scope="module")
def f32(tiny_model):
    return _as(tiny_model, torch.float32)


@pytest.fixture(scope="module")
def f32_scores(f32):
    return snip_scores(f32, _batches(f32))


def test_scores_equal_an_independent_float64_reference(f32, f32_scores):
    """The float32 model's scores against independent float64 references: (a) float64 autograd
    on a float64 copy: they differ by the float32 forward/backward only (measured: <= 1e-4
    relative on entries above 1e-3 of the matrix's largest score, 3e-6 of the largest anywhere;
    asserted with 10x margin); (b) the float32 model's own gradients summed in float64: the
    float32 sum and hooks cost nothing measurable (measured 1.5e-7; rtol 1e-6); (c) a float64
    model (float64 sums) against (a): rtol 1e-6."""
    batches = _batches(f32)
    ref = _reference(f32, batches)
    own = _reference(f32, batches, torch.float32)
    assert list(f32_scores) == block_weight_names(f32)
    for n, s in f32_scores.items():
        assert s.dtype == torch.float32 and s.device.type == "cpu", n
        r = ref[n].float()
        big = r > 1e-3 * r.max()
        torch.testing.assert_close(s[big], r[big], rtol=1e-3, atol=0, msg=n)
        torch.testing.assert_close(s, r, rtol=0, atol=3e-5 * float(r.max()), msg=n)
        torch.testing.assert_close(s, own[n].float(), rtol=1e-6, atol=0, msg=n)
    s64 = snip_scores(_as(f32, torch.float64), batches)  # float64 model: float64 sums
    for n, s in s64.items():
        torch.testing.assert_close(s, ref[n].float(), rtol=1e-6, atol=0, msg=n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float32_sums_of_many_batches_keep_their_precision(f32, dtype):
    """One batch repeated n = 64 times: the float32 sum is within n * 2^-24 (the worst case the
    docstring states) of n times the one-batch score. For a bf16 model this shows the sum is not
    taken in bf16 (8-bit mantissa: a bf16 sum of 64 equal terms is off by up to ~1e-2)."""
    model = f32 if dtype == torch.float32 else _as(f32, dtype)
    batch = _batches(model, TEXTS[-1:], size=1)
    n = 64
    one = snip_scores(model, batch)
    many = snip_scores(model, batch * n)
    for name in one:
        assert many[name].dtype == torch.float32
        expected = one[name].double() * n
        rel = ((many[name].double() - expected).abs() / expected.clamp_min(1e-30)).max()
        assert rel <= n * 2.0 ** -24, (name, float(rel))


def test_one_gradient_alive_at_a_time_and_hooks_removed(tiny_model):
    """An observer hook, registered before snip_scores's own (so it runs first), sees the
    parameter being accumulated as the only one with a .grad; afterwards no hook, no .grad, the
    requires_grad flags and the training mode are as they were."""
    model = _as(tiny_model, torch.float32)
    params = dict(model.named_parameters())
    names = block_weight_names(model)
    alive, calls = [], []

    def observe(p):
        calls.append(p)
        alive.append(sum(q.grad is not None for q in model.parameters()))
        assert p.grad is not None

    observers = [params[n].register_post_accumulate_grad_hook(observe) for n in names]
    # a mixed pattern of flags to restore: an embedding on, a scored matrix off
    params["embed.W_E"].requires_grad_(True)
    params[names[1]].requires_grad_(False)
    flags = {n: p.requires_grad for n, p in params.items()}
    model.train()
    batches = _batches(model)
    snip_scores(model, batches)
    for h in observers:
        h.remove()
    assert len(calls) == len(names) * len(batches)  # every matrix, once per batch
    assert max(alive) == 1  # the one being accumulated, never a full set
    assert _no_post_hooks(model)
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in params.items()} == flags
    assert model.training


def test_bf16_model_sums_in_float32(f32, f32_scores):
    """A bf16 model's scores are float32 and close to the float32 model's (bf16 tolerance:
    measured <= 1% relative (Frobenius) per matrix, <= 6% on entries above 0.1 of the largest);
    and neither they nor score / |W| (a bf16 sum times a bf16 |W| is exact in float32) are
    bf16 values, as they would be if summed or multiplied in bf16 (measured ~13% are, by
    chance)."""
    model = _as(f32, torch.bfloat16)
    scores = snip_scores(model, _batches(model))
    params = dict(model.named_parameters())
    for n, s in scores.items():
        assert s.dtype == torch.float32 and s.device.type == "cpu", n
        r = f32_scores[n]
        if not r.any():  # TransformerLens's zero biases b_Q, b_K, b_V are 2-d: scored, and zero
            assert not s.any(), n
            continue
        rel = float((s - r).norm() / r.norm())
        assert rel < 0.05, (n, rel)
        top = r > 0.1 * r.max()  # the entries that decide a top-q set
        torch.testing.assert_close(s[top], r[top], rtol=0.1, atol=0, msg=n)
        w = params[n].detach().abs().float()
        for values in (s, (s / w)[w > 0]):  # bf16 scores, or bf16 sums times |W| in float32
            exact_bf16 = (values == values.bfloat16().float()).float().mean()
            assert exact_bf16 < 0.5, (n, float(exact_bf16))


def test_out_dir_writes_one_file_per_matrix_read_back_lazily(f32, f32_scores, tmp_path):
    out = tmp_path / "forget"
    files = snip_scores(f32, _batches(f32), out_dir=out)
    names = block_weight_names(f32)
    assert isinstance(files, ScoreFiles)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.safetensors" for n in names)
    assert list(files) == names and len(files) == len(names)
    assert names[0] in files and "embed.W_E" not in files
    with pytest.raises(KeyError):
        files["embed.W_E"]
    for n in names:
        got = files[n]
        assert got.dtype == torch.float32 and got.device.type == "cpu"
        assert torch.equal(got, f32_scores[n]), n
    assert dict(ScoreFiles(out)).keys() == set(names)  # found again from the folder alone
    # the callers in prune.py take the mapping as they take the dict
    assert torch.equal(neuron_scores(f32, files), neuron_scores(f32, f32_scores))
    fr = (0.01, 0.1, 0.5)
    assert Thresholds.of(files, fr).values == Thresholds.of(f32_scores, fr).values
    # rewriting replaces the files in place (atomic: no temporary left behind)
    snip_scores(f32, _batches(f32), out_dir=out)
    assert len(list(out.iterdir())) == len(names)


def test_thresholds_on_a_device_equal_topk(f32_scores):
    """Thresholds.of sorts once per matrix (optionally on another device): the same values as the
    k-th largest by topk."""
    fr = [0.005, 0.05, 0.2, 1.0]
    th = Thresholds.of(f32_scores, iter(fr), device="cpu")  # an iterator of fractions is fine
    for n, s in f32_scores.items():
        flat = s.reshape(-1)
        for f in fr:
            k = int(round(f * flat.numel()))
            expected = float("inf") if k == 0 else float(flat.topk(k).values[-1])
            assert th.values[n][f] == expected, (n, f)


class _Boom(torch.autograd.Function):
    """Identity forward; its backward raises, midway through the backward pass."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("boom")


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_an_interrupted_batch_leaves_no_hooks(tiny_model, monkeypatch, where):
    """A batch that raises (in the forward, or in the backward after the later blocks' hooks have
    run) leaves no hooks, no .grad, the flags and the mode as they were."""
    model = _as(tiny_model, torch.float32)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()
    real_loss = snip.lm_loss
    count = {"n": 0}
    mlp0 = model.blocks[0].mlp
    real_mlp = mlp0.forward

    def faulty_loss(m, batch):
        count["n"] += 1
        if count["n"] == 2:  # the second batch
            if where == "forward":
                raise RuntimeError("boom")
            monkeypatch.setattr(mlp0, "forward", lambda *a, **k: _Boom.apply(real_mlp(*a, **k)))
        return real_loss(m, batch)

    fired = []
    w_out = model.blocks[1].mlp.W_out
    watch = w_out.register_post_accumulate_grad_hook(lambda p: fired.append(count["n"]))
    monkeypatch.setattr(snip, "lm_loss", faulty_loss)
    with pytest.raises(RuntimeError, match="boom"):
        snip_scores(model, _batches(model))
    monkeypatch.undo()
    watch.remove()
    if where == "backward":
        assert fired == [1, 2]  # block 1's gradient was accumulated before the raise
    assert _no_post_hooks(model)
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training


# Zephyr-7B (Mistral-7B): 32 layers, d_model 4096, 8 KV heads of 128 (k, v: 4096x1024),
# d_mlp 14336, vocabulary 32000 (embedding and unembedding untied), bf16 weights
ZEPHYR_LAYER = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
ZEPHYR_SCORED = 32 * ZEPHYR_LAYER
ZEPHYR_TOTAL = 7_241_732_096  # incl. embeddings 2 * 32000 * 4096 and norms


def test_snip_memory_bytes_at_zephyr_7b():
    assert ZEPHYR_SCORED == 6_979_321_856
    peak = snip_memory_bytes(ZEPHYR_TOTAL, ZEPHYR_SCORED, 2, 4096 * 14336)
    weights, sums, grad = 2 * ZEPHYR_TOTAL, 4 * ZEPHYR_SCORED, 2 * 4096 * 14336
    assert peak == weights + sums + grad
    assert 42.5e9 < peak < 42.6e9  # fits an 80 GB GPU with ~37 GB for activations
    both = snip_memory_bytes(ZEPHYR_TOTAL, ZEPHYR_SCORED, 2, 4096 * 14336,
                             other_scores_on_device=True)
    assert both - peak == 4 * ZEPHYR_SCORED  # the forget set kept on the device: +28 GB
    # a float64 model sums in float64
    assert snip_memory_bytes(10, 6, 8, 4) == 10 * 8 + 6 * 8 + 4 * 8
