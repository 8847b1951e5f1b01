"""The paper preset, wired end to end with tiny stand-ins: a random Mistral with a SentencePiece-
style tokenizer and a Zephyr-like chat template as "Zephyr", a second one without tokenizer files
as "cais/Zephyr_RMU" (loaded with the original's tokenizer), WMDP- and MMLU-schema parquet files,
bfloat16, the official letter ids, the official directions recipe with its four variants and
weight-level pruning."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from interp.attacks import finetune, lens
from interp.attacks.direction_recipes import OfficialRecipe
from interp.errors import InterpError
from interp.model.load import load_model
from interp.model.lora import LoRAConfig
from interp.pipelines.reproduce import PRESETS, reproduce

from .conftest import save_tiny_hf, tiny_mistral_config

TOPICS = ["ATP", "DNA", "RNA", "virus", "cell", "gene", "enzyme", "protein", "lipid", "sugar",
          "spore", "toxin"]


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="module")
def standins(tmp_path_factory, tiny_zephyr_dir, zephyr_sp_tokenizer):
    root = tmp_path_factory.mktemp("paper")
    rmu = save_tiny_hf(root / "zephyr-rmu", tiny_mistral_config(len(zephyr_sp_tokenizer)),
                       zephyr_sp_tokenizer, seed=1)
    for f in rmu.iterdir():  # like cais/Zephyr_RMU: no usable tokenizer files
        if "token" in f.name or f.suffix == ".jinja":
            f.unlink()
    wmdp = [{"question": f"What does {t} do in the cell?",
             "choices": [f"{t} stores energy", f"{t} copies genes", f"{t} folds proteins",
                         f"{t} makes lipids"], "answer": i % 4} for i, t in enumerate(TOPICS)]
    mmlu = [{"question": f"What is {a} plus {b}?", "subject": "elementary_mathematics",
             "choices": [str(a + b), str(a + b + 1), str(a + b + 2), str(a * b + 7)],
             "answer": 0} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4)]]
    _parquet(root / "wmdp-bio.parquet", wmdp)
    _parquet(root / "mmlu.parquet", mmlu)
    return root, tiny_zephyr_dir, rmu


def test_rmu_without_tokenizer_needs_the_override(standins):
    root, original, rmu = standins
    with pytest.raises(InterpError, match="tokenizer"):
        load_model(rmu, device="cpu")
    model = load_model(rmu, device="cpu", tokenizer=str(original), dtype="bfloat16")
    assert model.cfg.dtype.is_floating_point and str(model.cfg.dtype) == "torch.bfloat16"


def test_paper_preset_runs_with_standins(standins, tmp_path):
    root, original, rmu = standins
    small = replace(
        PRESETS["paper"], model=str(original), external={"rmu": str(rmu)},
        tokenizer=str(original), sources=(str(root / "wmdp-bio.parquet"),
                                          str(root / "mmlu.parquet")),
        attacks={
            "directions": replace(PRESETS["paper"].attacks["directions"], sweep_limit=10,
                                  official=OfficialRecipe(outlier_tokens=200, pca_limit=100)),
            "prune": replace(PRESETS["paper"].attacks["prune"], grid=(0.05, 0.2), n_forget=4,
                             n_utility=4, eval_limit=10, max_len=96),
            "finetune": finetune.Config(unrelated_n=(4,), forget_k=(2,), epochs=1, max_len=64,
                                        lora=LoRAConfig(rank=4, alpha=16.0)),
            "lens": lens.Config(limit=None),
            "gcg": replace(PRESETS["paper"].attacks["gcg"], n_tokens=3, steps=2,
                           search_width=8, topk=8, resid_layers=(0, 1), eval_every=1,
                           progress=False, n_train=2)},
        protections={
            "npo": replace(PRESETS["paper"].protections["npo"], steps=3, max_len=48,
                           grad_accum=2, warmup_steps=1),
            "dpo": replace(PRESETS["paper"].protections["dpo"], steps=3, grad_accum=2,
                           warmup_steps=1)})
    assert PRESETS["paper"].attacks["gcg"].objective == "enhanced"
    assert small.methods == ("npo", "dpo", "rmu")
    summary = reproduce(small, tmp_path / "run", device="cpu", progress=False)
    rows = summary["rows"]
    assert {r["format"] for r in rows} == {"letter"}
    none = {(r["model"], r["split"], r["mode"]) for r in rows if r["attack"] == "none"}
    for model in ("original", "rmu", "npo", "dpo"):
        for split in ("forget", "retain"):
            for mode in ("raw", "chat"):
                assert (model, split, mode) in none
    ext = json.loads((tmp_path / "run" / "models" / "rmu" / "external.json").read_text())
    assert ext["model"] == str(rmu)
    assert not (tmp_path / "run" / "models" / "rmu" / "protection.json").exists()
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["forget_train"] + counts["forget_val"] + counts["forget_test"] == len(TOPICS)
    assert manifest["entities"]["forget"] == {"train": 3, "val": 2, "test": 7}
    assert "| rmu |" in (tmp_path / "run" / "table.md").read_text()
    # the official scorer's letter ids, recorded; the official directions recipe, every variant
    summary_json = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary_json["letter_ids"] == "official"
    attacks = {r["attack"] for r in rows if r["model"] == "rmu"}
    for variant in ("retain", "unrelated", "pca"):
        assert f"ablate-best-layer-{variant}" in attacks
    d = json.loads((tmp_path / "run" / "attacks" / "rmu" / "directions" / "result.json")
                   .read_text())
    assert d["recipe"] == "official" and isinstance(d["outliers"], list)
    for m, snip_data in (("rmu", "corpus"), ("npo", "generations"), ("dpo", "generations")):
        p = json.loads((tmp_path / "run" / "attacks" / m / "prune" / "result.json").read_text())
        assert p["level"] == "weight" and p["config"]["snip_data"] == snip_data, m
    for m in ("npo", "dpo"):
        enc = json.loads((tmp_path / "run" / "models" / m / "protection.json").read_text())
        assert enc["encoding"], m
