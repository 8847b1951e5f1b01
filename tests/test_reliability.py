"""Reliability and safety: hook hygiene for every hook context, SIGKILL and resume, safe loading,
nothing touches the network."""

from __future__ import annotations

import ast
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from interp.errors import InterpError
from interp.model.load import get_tokenizer, load_model
from interp.model.state import copy_model

ROOT = Path(__file__).parent.parent / "interp"
HOOKISH_CALLS = {"hooks", "run_with_cache", "register_parametrization", "register_forward_hook",
                 "register_post_accumulate_grad_hook",
                 "register_forward_pre_hook", "add_hook", "run_with_hooks"}


def hook_contexts() -> set[str]:
    """Every function in the package that is a context manager or adds hooks/parametrizations."""
    found = set()
    for path in ROOT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            is_ctx = any(getattr(d, "id", getattr(d, "attr", None)) == "contextmanager"
                         for d in node.decorator_list)
            calls = {getattr(c.func, "attr", getattr(c.func, "id", None))
                     for c in ast.walk(node) if isinstance(c, ast.Call)}
            if is_ctx or calls & HOOKISH_CALLS:
                found.add(f"{module}.{node.name}")
    return found


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


class Fault:
    """Makes the model's final norm raise, so any forward fails midway."""

    def __init__(self, model, monkeypatch):
        monkeypatch.setattr(model.ln_final, "forward", _boom)


def _tokens(model):
    return get_tokenizer(model)("The capital of France is Paris.")["input_ids"]


def _questions():
    from interp.data.questions import Question

    return [Question("The capital of France is", ("Paris", "Rome", "Oslo", "Lima"), 0,
                     format="cloze"),
            Question("The capital of Italy is", ("Paris", "Rome", "Oslo", "Lima"), 1,
                     format="cloze")]


def _raise_inside(ctx):
    with pytest.raises(RuntimeError, match="boom"):
        with ctx:
            raise RuntimeError("boom")


def ex_fixed_threads(m, mp):
    from interp.training import fixed_threads

    before = torch.get_num_threads()
    _raise_inside(fixed_threads())
    assert torch.get_num_threads() == before  # the caller's count is back


def ex_step_times(m, mp):
    from interp import timing

    _raise_inside(timing.step_times())
    assert not timing._collectors  # no collector left open


def ex_peak_memory(m, mp):
    import threading

    from interp.pipelines.probes import peak_memory

    threads = threading.active_count()
    _raise_inside(peak_memory(torch.device("cpu")))
    assert threading.active_count() == threads  # the sampler stopped


def ex_config_folder(m, mp):
    from interp.model.load import _config_folder

    seen = []

    def use():
        with _config_folder({"architectures": ["LlamaForCausalLM"]}) as folder:
            seen.append(folder)
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        use()
    assert not seen[0].exists()  # the temporary folder is gone


def ex_maybe_hooks(m, mp):
    from interp.scoring import maybe_hooks

    _raise_inside(maybe_hooks(m, [("blocks.0.hook_resid_post", lambda x, hook: x)]))


def ex_evaluate(m, mp):
    from interp.scoring import evaluate

    with pytest.raises(RuntimeError, match="boom"):
        evaluate(m, _questions(), hooks=[("blocks.0.hook_resid_post", _boom)], progress=False)


def ex_score_recording(m, mp):
    from interp import score_cache
    from interp.scoring import evaluate

    with pytest.raises(RuntimeError, match="boom"):
        with score_cache.recording() as kept:
            evaluate(m, _questions(), progress=False)
            assert len(kept) == 2  # both questions recorded inside
            Fault(m, mp)
            evaluate(m, _questions()[:1], progress=False)
    assert not score_cache.is_recording()  # the recorder is closed after the failure


def ex_generate(m, mp):
    from interp.scoring import generate_greedy

    with pytest.raises(RuntimeError, match="boom"):
        generate_greedy(m, [_tokens(m)], hooks=[("blocks.1.hook_mlp_out", _boom)])


def ex_ablated(m, mp):
    from interp.attacks.ablation import ablated, ablation_hooks

    _raise_inside(ablated(m, ablation_hooks(m, torch.ones(m.cfg.n_layers, m.cfg.d_model))))


def ex_stream(m, mp):
    from interp.attacks.directions import DirectionsConfig, stream_activations

    Fault(m, mp)
    with pytest.raises(RuntimeError, match="boom"):
        list(stream_activations(m, [_tokens(m)], DirectionsConfig(hook="resid_post")))


def ex_iter_activations(m, mp):
    from interp.activations import iter_activations

    Fault(m, mp)
    with pytest.raises(RuntimeError, match="boom"):
        list(iter_activations(m, [_tokens(m)], ["blocks.0.hook_resid_post"]))


def ex_lens(m, mp):
    from interp.attacks.lens import logit_lens

    Fault(m, mp)
    with pytest.raises(RuntimeError, match="boom"):
        logit_lens(m, _questions())


def ex_last_activations(m, mp):
    from interp.activations import last_activations

    Fault(m, mp)
    with pytest.raises(RuntimeError, match="boom"):
        last_activations(m, _questions())


def ex_snip(m, mp):
    from interp.attacks.prune import snip_scores
    from interp.training import pack

    Fault(m, mp)
    with pytest.raises(RuntimeError, match="boom"):
        snip_scores(m, [pack([_tokens(m)], [2], 0, "cpu")])


def ex_pruned(m, mp):
    from interp.attacks.prune import pruned

    _raise_inside(pruned(m, {"blocks.0.mlp.W_out": torch.ones_like(m.blocks[0].mlp.W_out,
                                                                   dtype=torch.bool)}))


def ex_lora(m, mp):
    from interp.model.lora import LoRAConfig, lora_adapters

    for impl in ("hooks", "weights"):  # hooks beside the matmuls; parametrized weights
        _raise_inside(lora_adapters(m, LoRAConfig(rank=2, impl=impl)))


def _objective(m, enhanced=False):
    from interp.attacks.gcg import GCGConfig, Objective, question_slots

    cfg = GCGConfig(n_tokens=3, objective="enhanced" if enhanced else "plain",
                    resid_layers=(0,) if enhanced else ())
    slots = [question_slots(get_tokenizer(m), q, chat=False, fmt=None) for q in _questions()]
    return Objective(m, slots, cfg, original=m if enhanced else None)


def ex_gcg_forward(m, mp):
    obj = _objective(m, enhanced=True)
    Fault(m, mp)
    prefix = torch.tensor(_tokens(m)[:3])
    with pytest.raises(RuntimeError, match="boom"):
        obj.losses(prefix[None])
    with pytest.raises(RuntimeError, match="boom"):
        obj.token_gradient(prefix)


def ex_gcg_reference(m, mp):
    Fault(m, mp)
    with pytest.raises(RuntimeError, match="boom"):
        _objective(m, enhanced=True)


def ex_token_activations(m, mp):
    from interp.attacks.direction_recipes import token_activations

    Fault(m, mp)
    with pytest.raises(RuntimeError, match="boom"):
        list(token_activations(m, [_tokens(m)], 1))


def ex_hf_block_output(m, mp):
    """The transformers side of a benchmark row: its hook goes even when the forward fails."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.training import hf_block_output
    from interp.training import pack

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2))
    mp.setattr(hf.model.norm, "forward", _boom)
    with pytest.raises(RuntimeError, match="boom"):
        hf_block_output(hf, pack([[1, 2, 3]], [1], 0, "cpu"), 0)
    assert not any(mod._forward_hooks for mod in hf.modules())


def ex_continuous(m, mp):
    """The continuous attacks' forward (a hook on the embedding) and the frozen block."""
    from interp.attacks import continuous, soft_prompt

    rows = continuous.encode_rows(m, _questions(), 2)
    prefix = torch.zeros(2, m.cfg.d_model, requires_grad=True)
    Fault(m, mp)
    with pytest.raises(RuntimeError, match="boom"):
        with continuous.frozen(m):
            continuous.candidate_loss(m, rows, soft_prompt.prefix_hooks(prefix)(rows))


def ex_mean_norm(m, mp):
    from interp.attacks import continuous, latent

    rows = continuous.encode_rows(m, _questions())
    mp.setattr(m.blocks[0], "forward", _boom)
    with pytest.raises(RuntimeError, match="boom"):
        latent.mean_norm(m, rows, 0)


def ex_eager_attention(m, mp):
    from interp.model.attention import attention_modules, eager_attention, is_installed

    before = [is_installed(a) for a in attention_modules(m)]
    _raise_inside(eager_attention(m))
    assert [is_installed(a) for a in attention_modules(m)] == before


def ex_fused_on_meta(m, mp):
    import torch.nn.functional as F

    from interp.pipelines.memory_plan import fused_attention_on_meta

    real = F.scaled_dot_product_attention
    _raise_inside(fused_attention_on_meta())
    assert F.scaled_dot_product_attention is real


def ex_step_peak(m, mp):
    from interp.pipelines.memory_plan import Workload, step_peak

    Fault(m, mp)
    for w in (Workload("x", 1, 8, "weights", "all"), Workload("x", 1, 8, "weights", snip=True)):
        with pytest.raises(RuntimeError, match="boom"):
            step_peak(m, w)


def ex_masters(m, mp):
    from interp.training import TrainConfig, lm_loss, pack, train

    batch = pack([_tokens(m)], [2], 0, "cpu")
    saved = {n: p.detach().clone() for n, p in m.named_parameters()}
    m.to(torch.bfloat16)  # half precision: the float32 masters and their hooks
    params = [p for n, p in m.named_parameters() if "mlp" in n]
    Fault(m, mp)
    with pytest.raises(RuntimeError, match="boom"):
        train(params, lambda b: lm_loss(m, b), lambda s, k: batch,
              TrainConfig(steps=2, progress=False))
    for n, p in m.named_parameters():
        p.data = saved[n]


def ex_place_blocks(m, mp):
    from interp.model.placement import place_blocks

    place_blocks(m, lambda i, cfg: torch.device("cpu"))  # adds its own pre-hooks, then remove
    for name in ("ln_final", "unembed"):
        getattr(m, name)._forward_pre_hooks.clear()
    # its hooks are permanent by design (the placed model keeps them); on one device a forward
    # still runs and fails only where the fault is
    Fault(m, mp)
    with pytest.raises(RuntimeError, match="boom"):
        m(torch.tensor([_tokens(m)]))


EXERCISES = {
    "interp.model.placement.place_blocks": ex_place_blocks,
    "interp.model.attention.eager_attention": ex_eager_attention,
    "interp.pipelines.memory_plan.fused_attention_on_meta": ex_fused_on_meta,
    "interp.pipelines.memory_plan.step_peak": ex_step_peak,
    "interp.training.__init__": ex_masters,
    "interp.attacks.continuous.candidate_logits": ex_continuous,
    "interp.attacks.continuous.frozen": ex_continuous,
    "interp.attacks.latent.mean_norm": ex_mean_norm,
    "interp.attacks.direction_recipes.token_activations": ex_token_activations,
    "benchmarks.training.hf_block_output": ex_hf_block_output,
    "interp.scoring.maybe_hooks": ex_maybe_hooks,
    "interp.scoring.evaluate": ex_evaluate,
    "interp.scoring.generate_greedy": ex_generate,
    "interp.attacks.ablation.ablated": ex_ablated,
    "interp.attacks.directions.stream_activations": ex_stream,
    "interp.activations.iter_activations": ex_iter_activations,
    "interp.attacks.lens.logit_lens": ex_lens,
    "interp.activations.last_activations": ex_last_activations,
    "interp.attacks.snip.snip_scores": ex_snip,
    "interp.attacks.snip.pruned": ex_pruned,
    "interp.model.lora.lora_adapters": ex_lora,
    "interp.training.fixed_threads": ex_fixed_threads,
    "interp.timing.step_times": ex_step_times,
    "interp.pipelines.probes.peak_memory": ex_peak_memory,
    "interp.model.load._config_folder": ex_config_folder,
    "interp.model.lora.add_lora": ex_lora,
    "interp.attacks.gcg_objective.Objective._forward": ex_gcg_forward,
    "interp.attacks.gcg_objective.Objective._reference": ex_gcg_reference,
    "interp.model.lora._add_hooks": ex_lora,
    "interp.score_cache.recording": ex_score_recording,
}


def test_every_hook_context_is_exercised():
    found = hook_contexts()
    # methods are found by name only; qualify the Objective ones
    qualified = {f.replace("interp.attacks.gcg_objective._",
                           "interp.attacks.gcg_objective.Objective._") for f in found}
    untested = qualified - set(EXERCISES)
    assert not untested, f"new hook contexts without a hygiene test: {sorted(untested)}"


def _state(model):
    hooks = sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())
    torch_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                      for m in model.modules())
    from interp.model.lora import has_lora

    torch_hooks += sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())
    return {"hooks": hooks, "torch_hooks": torch_hooks, "lora": has_lora(model),
            "grad": {n: p.requires_grad for n, p in model.named_parameters()},
            "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
            "training": model.training}


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_an_exception_leaves_no_hooks(name, tiny_model, monkeypatch):
    model = copy_model(tiny_model)
    before = _state(model)
    assert before["hooks"] == 0 and before["torch_hooks"] == 0
    EXERCISES[name](model, monkeypatch)
    monkeypatch.undo()
    after = _state(model)
    assert after["hooks"] == 0 and after["torch_hooks"] == 0 and not after["lora"]
    assert after["grad"] == before["grad"] and after["training"] == before["training"]
    assert after["weights"].keys() == before["weights"].keys()
    assert all(torch.equal(after["weights"][n], w) for n, w in before["weights"].items())


# ------------------------------------------------------------------------- crash and resume
def _cli(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "interp.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _json_ok(path: Path):
    """Every file the run leaves must parse: atomic writes leave no torn JSON."""
    for f in path.rglob("*.json"):
        json.loads(f.read_text())


def _kill_when(proc, ready, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run never reached the kill point")


def _strip(result: dict) -> dict:
    drop = {"seconds", "figures", "resumed_from"}
    out = {k: v for k, v in result.items() if k not in drop}
    if "cells" in out and isinstance(out["cells"], dict):
        out["cells"] = {n: {k: v for k, v in c.items() if k != "seconds"}
                        for n, c in out["cells"].items()}
    return out


def test_sigkill_then_resume_gives_the_uninterrupted_result(smoke_protected, tmp_path):
    """A pruning grid and a finetuning sweep, each killed with SIGKILL at two points (after the
    first finished cell, and later), resume to the result of an uninterrupted run."""
    folder, out, _ = smoke_protected
    base = ["--model", str(out / "rmu"), "--data", str(folder), "--device", "cpu"]
    prune = ["attack", "prune", *base, "--grid", "0.01,0.05,0.2", "--eval-limit", "20",
             "--n-forget", "16", "--n-utility", "16"]
    ft = ["attack", "finetune", *base, "--unrelated-n", "10,20", "--forget-k", "5", "--lr", "0.005",
          "--rank", "4", "--eval-limit", "20", "--epochs", "1"]

    def grid_cells(d):
        return len(json.loads((d / "grid.json").read_text())["cells"]) if (
            d / "grid.json").is_file() else 0

    def ft_cells(d):
        return len(list((d / "cells").glob("*.json"))) if (d / "cells").is_dir() else 0

    for name, args, count, points in (("prune", prune, grid_cells, (1, 3)),
                                      ("finetune", ft, ft_cells, (1, 2))):
        ref_dir = tmp_path / f"{name}-ref"
        ref = _cli([*args, "--out", str(ref_dir)], tmp_path)
        assert ref.wait(timeout=600) == 0, ref.stderr.read()
        expected = _strip(json.loads((ref_dir / "result.json").read_text()))
        run_dir = tmp_path / f"{name}-run"
        for point in points:  # kill, then kill the resumed run later on
            proc = _cli([*args, "--out", str(run_dir)], tmp_path)
            killed = _kill_when(proc, lambda p=point, d=run_dir, c=count: c(d) >= p)
            assert killed, f"{name}: the run finished before the kill point {point}"
            _json_ok(run_dir)
            assert not (run_dir / "result.json").exists()
        again = _cli([*args, "--out", str(run_dir)], tmp_path)
        assert again.wait(timeout=600) == 0, again.stderr.read()
        _json_ok(run_dir)
        assert _strip(json.loads((run_dir / "result.json").read_text())) == expected, name


# ----------------------------------------------------------------------------- safe loading
class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/interp-pickle-ran")


def test_pickle_checkpoint_is_refused_and_never_run(tiny_llama_dir, tmp_path):
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    MARKER.unlink(missing_ok=True)
    with pytest.raises(InterpError, match="pickle checkpoints can run code"):
        load_model(folder, device="cpu")
    assert not MARKER.exists()


def test_no_torch_load_without_weights_only_and_no_remote_code_by_default():
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" and \
                    getattr(node.func.value, "id", "") == "torch":
                kws = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                assert kws.get("weights_only") is True, f"{path}:{node.lineno}"
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert getattr(node.value, "value", None) is not True, f"{path}:{node.lineno}"
    import inspect

    from interp.model.load import load_model as lm

    assert inspect.signature(lm).parameters["trust_remote_code"].default is False


def test_nothing_touches_the_network(tiny_llama_dir, monkeypatch, tmp_path):
    attempts = []

    def blocked(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    from interp.cli import main
    from interp.scoring import evaluate

    model = load_model(tiny_llama_dir, device="cpu")
    evaluate(model, _questions(), progress=False)
    embedded = load_model("smollm2", device="cpu")
    evaluate(embedded, _questions(), progress=False)
    assert main(["eval", "--model", "gpt2-nonexistent-xyz", "--data", "bank:capitals",
                 "--limit", "2", "--out", str(tmp_path / "x.json")]) == 2
    assert main(["eval", "--data", "wmdp-bio", "--out", str(tmp_path / "y.json")]) == 2
    assert attempts == []
