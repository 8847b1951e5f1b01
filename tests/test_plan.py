"""`interp plan`: step counts against what the attacks really do, the projection's arithmetic, the
tiny-shape run end to end, and the stages that do not fit."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from interp import timing
from interp.attacks import directions, finetune, gcg, lens, prune
from interp.cli import main
from interp.cost import Sizes
from interp.model.shapes import SHAPES, parameter_count, random_model
from interp.model.state import copy_model
from interp.pipelines import plan as planning
from interp.pipelines import probes
from interp.pipelines.plan import PlanConfig, count_steps, plan
from interp.pipelines.presets import PRESETS, train_protections

SMALL = {
    "directions": directions.Config(directions.DirectionsConfig(skip_first=1), sweep_limit=5,
                                    eval_limit=10),
    "finetune": finetune.Config(unrelated_n=(3,), forget_k=(2,), epochs=1, batch_size=2,
                                max_len=32, eval_limit=6),
    # a learning-rate grid (every cell trained and scored once per value), forget cells at
    # their own batch size and epochs
    "finetune-grid": finetune.Config(unrelated_n=(3,), forget_k=(2,), epochs=1, batch_size=2,
                                     max_len=32, eval_limit=6, lrs=(1e-3, 3e-3),
                                     forget_batch_size=1, forget_epochs=2),
    "gcg": gcg.Config(n_tokens=3, steps=3, search_width=4, topk=4, eval_every=2, n_train=2,
                      heldout_limit=5, progress=False),
    "prune": prune.Config(grid=(0.05, 0.2), n_forget=3, n_utility=3, eval_limit=4, max_len=48),
    "lens": lens.Config(limit=7),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = random_model("tiny", device="cpu")
    folder = tmp_path_factory.mktemp("plan") / "data"
    data = probes.synthetic_data(model, folder, 60, 48, n=24)
    return model, data


def _sizes(data, n_layers: int) -> Sizes:
    n = {s: len(data.questions(s)) for s in ("forget_train", "forget_test", "retain_train",
                                              "retain_test", "forget_val", "retain_val")}
    return Sizes(**n, unrelated=len(data.corpus("unrelated")), n_layers=n_layers)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_cost_counts_what_the_attack_does(tiny, name, monkeypatch):
    """Every question scored and every step taken by a real run, counted by wrapping the
    scorer and the step timer, equals the module's `cost`."""
    model, data = tiny
    module = {"directions": directions, "finetune": finetune, "gcg": gcg, "prune": prune,
              "lens": lens}[name.removesuffix("-grid")]
    scored = {"n": 0, "prompts": 0}
    real_evaluate = module.__dict__.get("evaluate")

    def counting_evaluate(m, questions, *args, **kwargs):
        scored["n"] += len(questions)
        return real_evaluate(m, questions, *args, **kwargs)

    if real_evaluate is not None:
        monkeypatch.setattr(module, "evaluate", counting_evaluate)
    if name == "directions":  # its per-layer sweep scores through the public ablation_sweep
        from interp.attacks import ablation_sweep

        monkeypatch.setattr(ablation_sweep, "evaluate", counting_evaluate)
    if name == "directions":
        real_mean = directions.robust_mean

        def counting_mean(m, prompts, cfg):
            scored["prompts"] += len(prompts)
            return real_mean(m, prompts, cfg)
        monkeypatch.setattr(directions, "robust_mean", counting_mean)
    if name == "lens":
        real_lens = lens.logit_lens

        def counting_lens(m, questions, cfg):
            scored["lens"] = scored.get("lens", 0) + len(questions)
            return real_lens(m, questions, cfg)
        monkeypatch.setattr(lens, "logit_lens", counting_lens)
    if name == "prune":
        real_snip = prune.snip_scores

        def counting_snip(m, batches, **kwargs):
            batches = list(batches)
            scored["snip"] = scored.get("snip", 0) + sum(b.tokens.shape[0] for b in batches)
            return real_snip(m, batches, **kwargs)
        monkeypatch.setattr(prune, "snip_scores", counting_snip)
    original = copy_model(model)
    with torch.no_grad():
        for p in original.parameters():
            p.add_(0.05 * torch.randn_like(p))
    protected = copy_model(model)
    with timing.step_times() as steps:
        module.run(protected, data, SMALL[name], original=original, progress=False)
    expected = module.cost(SMALL[name], _sizes(data, model.cfg.n_layers))
    if name == "lens":
        val, test = (len(data.questions(n, limit=7)) for n in ("forget_val", "forget_test"))
        assert scored["lens"] == expected["lens"] == val + test  # both splits, 7 at most
        return
    assert scored["n"] == expected["score"]
    if name == "directions":
        # the prompts the means read are a subset of the training questions, on both models
        assert 0 < scored["prompts"] <= expected["directions"]
    if name == "gcg":
        assert len(steps) == expected["gcg"]
    if name.startswith("finetune"):  # forget cells at their own batch size: a stage of their own
        assert len(steps) == expected["lora"] + expected["lora_forget"]
        assert (expected["lora_forget"] > 0) == (name == "finetune-grid")
    if name == "prune":
        assert scored["snip"] == expected["snip"] == 3 + 3 + 3


def test_forget_cells_are_timed_at_their_own_batch(tiny, tmp_path, monkeypatch):
    """The laptop preset's forget cells train at batch 1: `interp plan` times a step of them,
    forget statements at that batch, apart from the unrelated cells' batch-8 steps."""
    model, data = tiny
    seen = []
    real = finetune.finetune_cell

    def spy(m, seqs, cfg, *args, **kwargs):
        seen.append((cfg.batch_size, len(seqs)))
        return real(m, seqs, cfg, *args, **kwargs)

    monkeypatch.setattr(finetune, "finetune_cell", spy)
    laptop = PRESETS["laptop"]
    probe = probes.Probe(model, data, laptop, 2, torch.device("cpu"), tmp_path)
    kinds = finetune.probes(laptop.attacks["finetune"])
    assert kinds["lora_forget"].measure(probe, laptop.attacks["finetune"]) > 0
    assert kinds["lora"].measure(probe, laptop.attacks["finetune"]) > 0
    assert seen == [(1, 2), (8, 16)]  # 2 probe steps of 1 statement; of 8 passages
    counts = count_steps(laptop, _sizes(data, model.cfg.n_layers))
    cfg = laptop.attacks["finetune"]
    per_model = sum(3 * k for k in (*cfg.forget_k, *cfg.placebo_k))  # batch 1, 3 epochs
    assert all(n == per_model for n in counts["lora_forget"].values())


def test_projection_counts_the_paper_preset_by_hand():
    """The paper preset at WMDP-bio / MMLU sizes, counted by hand for the protections."""
    p = PRESETS["paper"]
    sizes = planning.preset_sizes(p, PlanConfig(), 32)
    # by entity (a WMDP or MMLU question is its own): a quarter, at most 64, trains the
    # attacks; a fifth, at most 200, is where they choose; the rest is the test split
    assert (sizes.forget_train, sizes.forget_val, sizes.forget_test) == (64, 200, 1009)
    assert (sizes.retain_train, sizes.retain_val, sizes.retain_test) == (64, 200, 13778)
    counts = count_steps(p, sizes)
    measure = (1009 + 13778) * 2  # forget and retain test split, raw and chat
    for method in ("rmu", "npo", "dpo"):  # measured before and after protecting
        assert counts["score"][f"{method}: protect"] == 2 * measure
    # the authors' models are loaded, not trained; --train-protections trains them
    assert counts["rmu"] == {} and counts["npo"] == {} and counts["dpo"] == {}
    trained = count_steps(train_protections(p, "npo,dpo"), sizes)
    assert trained["npo"] == {"npo: protect": 250} and trained["dpo"] == {"dpo: protect": 250}
    assert trained["rmu"] == {}
    g = p.attacks["gcg"]
    for model in ("rmu", "npo", "dpo"):
        assert counts["gcg"][f"gcg on {model}"] == g.steps
    assert set(counts["lens"]) == {"lens on original", "lens on rmu", "lens on npo",
                                   "lens on dpo"}  # the lens also reads the original
    assert set(counts["readout"]) == {f"{a} on {m}" for a in ("tuned_lens", "probe")
                                      for m in ("original", "rmu", "npo", "dpo")}
    # finetuning, unrelated n = 10, 100, 1000 and forget k = 5, 10, 50, batch 1 (the official
    # recipe), 3 epochs: 30 / 300 / 3,000 steps for the unrelated n, as the paper
    # and the shuffled-values placebo at k = 10, 50
    per_model = sum(3 * n for n in (10, 100, 1000, 5, 10, 50, 10, 50))
    assert counts["lora"]["finetune on npo"] == per_model


def test_plan_tiny_end_to_end(tmp_path, monkeypatch):
    """Every stage's real code on the tiny shape; a stage that runs out of memory is reported,
    not raised; projection = steps x seconds per step."""
    light = replace(PRESETS["paper"], attacks={
        **PRESETS["paper"].attacks,
        "gcg": replace(PRESETS["paper"].attacks["gcg"], search_width=16, candidate_batch=16)})

    def out_of_memory(probe, cfg):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    from interp.cost import StepProbe

    monkeypatch.setattr(lens, "probes", lambda cfg: {"lens": StepProbe(
        "question read", out_of_memory, knob="a smaller lens batch_size")})
    out = tmp_path / "plan.json"
    result = plan(PlanConfig(shape="tiny", device="cpu", dtype="float32", probe_steps=2,
                             prompt_tokens=120), out,
                  progress=False, preset=light)
    data = json.loads(out.read_text())
    assert {"preset", "shape", "device", "dtype", "stages", "projected_total_seconds"} <= set(data)
    assert (data["preset"], data["shape"], data["device"], data["dtype"]) == \
        ("paper", "tiny", "cpu", "float32")
    stages = {s["stage"]: s for s in data["stages"]}
    # every kind the registry's modules count for this preset (the paper's forget cells share
    # the LoRA batch: no kind of their own)
    assert list(stages) == list(planning.step_kinds(light).probes)
    assert set(stages) == {"score", "rmu", "npo", "dpo", "lora", "directions", "lens", "gcg",
                           "snip", "readout", "soft_prompt", "latent"}
    for name, s in stages.items():
        assert {"stage", "seconds_per_step", "steps", "projected_seconds", "peak_memory_mb",
                "fits"} <= set(s)
        if name == "lens":
            assert not s["fits"] and s["projected_seconds"] is None
            assert "ran out of memory" in s["note"] and "--n-devices" in s["note"]
            continue
        assert s["fits"] and s["seconds_per_step"] > 0 and s["peak_memory_mb"] > 0
        assert s["projected_seconds"] == pytest.approx(s["seconds_per_step"] * s["steps"],
                                                       rel=1e-3)
        assert s["steps"] == sum(s["counted"].values())
    assert stages["rmu"]["steps"] == 0  # loaded, not trained: measured, projected as nothing
    assert data["projected_total_seconds"] == pytest.approx(
        sum(s["projected_seconds"] or 0 for s in data["stages"]), rel=1e-3)
    assert not data["all_fit"]
    assert result.n_params == parameter_count(SHAPES["tiny"])


def test_plan_cli_when_the_weights_do_not_fit(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--shape", "zephyr", "--device", "cpu", "--memory-mb", "1000",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["n_params"] == parameter_count(SHAPES["zephyr"])
    assert 7.2e9 < data["n_params"] < 7.3e9  # Zephyr-7B / Mistral-7B
    assert all(not s["fits"] and "weights alone need 13,8" in s["note"] for s in data["stages"])
    assert "NO" in capsys.readouterr().out


def test_plan_cli_bad_input(tmp_path, capsys):
    assert main(["plan", "--shape", "nosuch", "--out", str(tmp_path / "p.json")]) == 2
    assert "unknown shape 'nosuch'" in capsys.readouterr().err
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    assert main(["plan", "--shape", str(bad), "--out", str(tmp_path / "p.json")]) == 2
    assert main(["plan", "--preset", "laptop", "--shape", "tiny",
                 "--out", str(tmp_path / "p.json")]) == 2
    assert "give --forget and --retain" in capsys.readouterr().err
