"""The paper preset, wired end to end with tiny stand-ins: a random Mistral with a SentencePiece-
style tokenizer and a Zephyr-like chat template as "Zephyr", others without tokenizer files as
"cais/Zephyr_RMU" and the authors' NPO and DPO models of each subset (loaded with the original's
tokenizer), WMDP-bio-, WMDP-cyber- and MMLU-schema parquet files, bfloat16, the official letter
ids, the official directions recipe with its four variants and weight-level pruning."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from interp.attacks import finetune, lens
from interp.attacks.direction_recipes import OfficialRecipe
from interp.errors import InterpError
from interp.model.files import WEIGHTS
from interp.model.load import load_model
from interp.model.lora import LoRAConfig
from interp.pipelines.presets import Domain, domain_presets, train_protections
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
    models = {}
    for seed, name in enumerate(["rmu", "npo-bio", "dpo-bio", "npo-cyber", "dpo-cyber"], 1):
        folder = save_tiny_hf(root / f"zephyr-{name}",
                              tiny_mistral_config(len(zephyr_sp_tokenizer)), zephyr_sp_tokenizer,
                              seed=seed)
        for f in folder.iterdir():  # like cais/Zephyr_RMU: no usable tokenizer files
            if "token" in f.name or f.suffix == ".jinja":
                f.unlink()
        models[name] = str(folder)
    wmdp = [{"question": f"What does {t} do in the cell?",
             "choices": [f"{t} stores energy", f"{t} copies genes", f"{t} folds proteins",
                         f"{t} makes lipids"], "answer": i % 4} for i, t in enumerate(TOPICS)]
    mmlu = [{"question": f"What is {a} plus {b}?", "subject": "elementary_mathematics",
             "choices": [str(a + b), str(a + b + 1), str(a + b + 2), str(a * b + 7)],
             "answer": 0} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4)]]
    cyber = [{"question": f"Which port does {t} listen on?",
              "choices": [f"{t} on 22", f"{t} on 80", f"{t} on 443", f"{t} on 8080"],
              "answer": (i + 1) % 4} for i, t in enumerate(["ssh", "http", "tls", "proxy", "dns",
                                                            "smtp", "ftp", "ntp", "ldap", "rdp"])]
    _parquet(root / "wmdp-bio.parquet", wmdp)
    _parquet(root / "wmdp-cyber.parquet", cyber)
    _parquet(root / "mmlu.parquet", mmlu)
    return root, tiny_zephyr_dir, models


def test_rmu_without_tokenizer_needs_the_override(standins):
    root, original, models = standins
    rmu = models["rmu"]
    with pytest.raises(InterpError, match="tokenizer"):
        load_model(rmu, device="cpu")
    model = load_model(rmu, device="cpu", tokenizer=str(original), dtype="bfloat16")
    assert model.cfg.dtype.is_floating_point and str(model.cfg.dtype) == "torch.bfloat16"


def test_the_paper_preset_loads_the_authors_models_on_bio_and_cyber():
    """The names of ethz-spylab/unlearning-vs-safety's scripts: the public RMU model for both
    subsets, one NPO and one DPO model per subset."""
    p = PRESETS["paper"]
    assert [d.name for d in p.domains] == ["bio", "cyber"]
    assert [d.forget for d in p.domains] == ["wmdp-bio", "wmdp-cyber"]
    for d in p.domains:
        assert d.external == {"rmu": "cais/Zephyr_RMU", "npo": f"J4Q8/zephyr-npo-{d.name}",
                              "dpo": f"J4Q8/zephyr-dpo-{d.name}"}
    subs = domain_presets(p)
    assert [s.sources for s in subs] == [("wmdp-bio", "mmlu"), ("wmdp-cyber", "mmlu")]
    assert [s.subject for s in subs] == ["biology", "cybersecurity"]
    trained = domain_presets(train_protections(p, "npo,dpo"))
    assert [s.external for s in trained] == [{"rmu": "cais/Zephyr_RMU"}] * 2
    assert set(trained[0].methods) == {"rmu", "npo", "dpo"}
    with pytest.raises(InterpError, match="no training settings"):
        train_protections(p, "npo,rlhf")


def _small(root, original, models):
    """The paper preset at stand-in size: every budget cut, the same code."""
    domains = tuple(Domain(d, str(root / f"wmdp-{d}.parquet"), subject,
                           {"rmu": models["rmu"], "npo": models[f"npo-{d}"],
                            "dpo": models[f"dpo-{d}"]})
                    for d, subject in (("bio", "biology"), ("cyber", "cybersecurity")))
    return replace(
        PRESETS["paper"], model=str(original), external=dict(domains[0].external),
        domains=domains, tokenizer=str(original),
        sources=(str(root / "wmdp-bio.parquet"), str(root / "mmlu.parquet")),
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


def test_paper_preset_runs_with_standins(standins, tmp_path):
    root, original, models = standins
    small = _small(root, original, models)
    assert PRESETS["paper"].attacks["gcg"].objective == "enhanced"
    assert small.methods == ("npo", "dpo", "rmu")
    both = reproduce(small, tmp_path / "paper", device="cpu", progress=False)
    assert set(both["domains"]) == {"bio", "cyber"}
    table = (tmp_path / "paper" / "table.md").read_text()
    assert "## bio" in table and "## cyber" in table
    for d in ("bio", "cyber"):  # every protected model is the domain's own, loaded, not trained
        for m in ("rmu", "npo", "dpo"):
            folder = tmp_path / "paper" / d / "models" / m
            spec = models["rmu"] if m == "rmu" else models[f"{m}-{d}"]
            assert json.loads((folder / "external.json").read_text())["model"] == spec
            assert not (folder / "protection.json").exists()
    cyber = json.loads((tmp_path / "paper" / "cyber" / "data" / "manifest.json").read_text())
    c = cyber["counts"]
    assert c["forget_train"] + c["forget_val"] + c["forget_test"] == 10
    assert both["domains"]["cyber"]["domain"] == "cyber"
    summary = both["domains"]["bio"]
    (tmp_path / "run").symlink_to(tmp_path / "paper" / "bio")
    rows = summary["rows"]
    assert {r["format"] for r in rows} == {"letter"}
    none = {(r["model"], r["split"], r["mode"]) for r in rows if r["attack"] == "none"}
    for model in ("original", "rmu", "npo", "dpo"):
        for split in ("forget", "retain"):
            for mode in ("raw", "chat"):
                assert (model, split, mode) in none
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


def test_train_protections_trains_npo_and_dpo_in_half_precision(standins, tmp_path):
    """`--train-protections npo,dpo`: the bio run trains them (bfloat16 weights through float32
    masters) and still loads the RMU model."""
    root, original, models = standins
    p = train_protections(_small(root, original, models), "npo,dpo")
    bio = replace(domain_presets(p)[0], attacks={"lens": lens.Config(limit=None)})
    reproduce(bio, tmp_path / "bio", device="cpu", progress=False)
    # the same folder with the authors' models loaded again: refused, not mixed into one table
    loaded = replace(domain_presets(_small(root, original, models))[0], attacks=bio.attacks)
    with pytest.raises(InterpError, match="external"):
        reproduce(loaded, tmp_path / "bio", device="cpu", progress=False)
    assert json.loads((tmp_path / "bio" / "models" / "rmu" / "external.json").read_text())[
        "model"] == models["rmu"]
    for m in ("npo", "dpo"):
        enc = json.loads((tmp_path / "bio" / "models" / m / "protection.json").read_text())
        assert enc["encoding"], m
        with safe_open(str(tmp_path / "bio" / "models" / m / WEIGHTS), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
