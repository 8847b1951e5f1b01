"""Scales as presets: which model and data, and every protection's and attack's `Config`.

A preset is only settings: the same code runs the smoke model in the tests, SmolLM2 on a laptop
and Zephyr-7B at paper scale. `attacks` maps an attack's registry name to its `Config`; an attack
missing from a preset does not run in it. Adding an attack to the reproduction is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from interp.attacks import directions, finetune, gcg, lens, prune
from interp.attacks.directions import DirectionsConfig
from interp.errors import InterpError
from interp.model.lora import LoRAConfig
from interp.protections import dpo, npo, rmu


@dataclass
class Preset:
    name: str
    data: str  # benchmark preset for `build_benchmark`
    protections: dict[str, Any]  # method -> its Config
    attacks: dict[str, Any]  # attack -> its Config
    model: str | None = None  # None: the benchmark preset's model
    # paper scale: questions from sources (WMDP, MMLU) instead of the fact-bank benchmark,
    # protected models that are loaded instead of trained, a dtype and a tokenizer override
    sources: tuple[str, str] | None = None  # (forget, retain) for `load_source`
    subject: str | None = None
    external: dict[str, str] = field(default_factory=dict)  # method -> model spec
    tokenizer: str | None = None  # tokenizer for every model (Zephyr's, for cais/Zephyr_RMU)
    dtype: str | None = None
    source_limit: int | None = None
    n_devices: int = 1  # TransformerLens' own placement of a model's blocks over N GPUs
    letter_ids: str = "in-context"  # the letter format's candidate rule (`interp.prompts`)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.protections, *self.external]))


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", data="smoke",
        protections={
            "rmu": rmu.Config(layer=3, steer_scale=8.0, alpha=100.0, lr=3e-2, batch_size=8,
                              steps=300),
            "npo": npo.Config(beta=0.1, retain_weight=3.0, lr=3e-3, batch_size=8, steps=200,
                              params="mlp"),
            # the smoke model has never seen a refusal: an NLL term on it teaches one
            "dpo": dpo.Config(beta=0.01, lr=2e-3, batch_size=8, steps=300, params="mlp",
                              forget_frac=0.8, sft_weight=1.0),
        },
        attacks={
            "finetune": finetune.Config(unrelated_n=(10, 50), forget_k=(3, 6), lr=5e-3,
                                        epochs=2, min_steps=8, batch_size=8,
                                        lora=LoRAConfig(rank=8, alpha=16.0)),
            "directions": directions.Config(DirectionsConfig(), sweep_limit=100),
            "lens": lens.Config(limit=200),
            "gcg": gcg.Config(n_tokens=6, steps=10, search_width=64, topk=32, progress=False,
                              n_train=6, heldout_limit=100),
            "prune": prune.Config(grid=(0.01, 0.05, 0.1, 0.2), eval_limit=100, n_forget=32,
                                  n_utility=32),
        }),
    "laptop": Preset(
        name="laptop", data="laptop",
        protections={
            "rmu": rmu.Config(steer_scale=4.0, alpha=100.0, lr=1e-3, batch_size=8, steps=150),
            "npo": npo.Config(beta=0.1, retain_weight=1.0, lr=1.5e-4, batch_size=8, steps=60,
                              params="mlp"),
            "dpo": dpo.Config(beta=0.02, lr=2e-4, batch_size=8, steps=50, params="mlp",
                              forget_frac=0.7),
        },
        attacks={
            # forget cells as the paper trains them (batch 1, 3 epochs: 15 / 30 / 150 steps);
            # unrelated cells at batch 8 (the paper's 30 / 300 steps at batch 1 cost 330 s per
            # model for n = 100 alone). lr 1e-3 over 2e-4: validation forget accuracy of RMU's
            # k = 50 cell 91.5% vs 48.9% (README)
            "finetune": finetune.Config(unrelated_n=(10, 100), forget_k=(5, 10, 50), lr=1e-3,
                                        epochs=1, min_steps=12, batch_size=8, max_len=80,
                                        forget_batch_size=1, forget_epochs=3,
                                        eval_limit=100, lora=LoRAConfig(rank=16, alpha=16.0)),
            "directions": directions.Config(DirectionsConfig(), sweep_limit=40, eval_limit=200),
            "lens": lens.Config(limit=200),
            "gcg": gcg.Config(n_tokens=8, steps=15, search_width=32, topk=64, eval_every=5,
                              n_train=4, heldout_limit=100),
            "prune": prune.Config(grid=(0.01, 0.025, 0.05), eval_limit=60),
        }),
    "paper": Preset(
        name="paper", data="paper",
        model="HuggingFaceH4/zephyr-7b-beta", sources=("wmdp-bio", "mmlu"), subject="biology",
        external={"rmu": "cais/Zephyr_RMU"}, tokenizer="HuggingFaceH4/zephyr-7b-beta",
        dtype="bfloat16", letter_ids="official",  # the official scorer's rule
        protections={  # rmu: the public cais/Zephyr_RMU is loaded (`external`), not trained
            "rmu": rmu.Config(layer=7, steer_scale=1.0, alpha=1200.0, lr=5e-5, batch_size=4,
                              steps=150, max_len=512),
            # docs/recipes.md: the official trainers' settings and where these differ
            "npo": npo.Config(beta=0.1, retain_weight=2.0, lr=1e-5, batch_size=4, grad_accum=18,
                              steps=250, warmup_steps=150, max_len=1024, loss_on="all",
                              retain_reduction="sum"),
            "dpo": dpo.Config(beta=0.1, lr=5e-6, batch_size=4, grad_accum=8, steps=250,
                              warmup_steps=150, max_len=1024, forget_frac=0.5),
        },
        attacks={
            "finetune": finetune.Config(unrelated_n=(10, 100, 1000), forget_k=(5, 10, 50),
                                        lr=2e-4, epochs=3, batch_size=1, max_len=1024,
                                        weight_decay=0.01, loss_on="all",
                                        system_prompt="You are a helpful assistant.",
                                        lora=LoRAConfig(rank=128, alpha=16.0)),
            "directions": directions.Config(  # the official recipe and its four variants
                DirectionsConfig(skip_first=40), sweep_limit=200, recipe="official",
                variants=("models", "retain", "unrelated", "pca")),
            "lens": lens.Config(limit=None),
            "gcg": gcg.Config(n_tokens=20, steps=250, search_width=512, topk=256,
                              candidate_batch=128, objective="enhanced", resid_layers=(7, 15),
                              eval_every=25, n_train=8, heldout_limit=None),
            "prune": prune.Config(level="weight", eval_limit=200, n_forget=512, n_utility=512,
                                  batch_size=1, max_len=512,  # the official: one sample a pass
                                  # RMU: forget corpus vs unrelated; NPO/DPO: own generations
                                  snip_data="official", last_k=50),
        }),
}


@dataclass
class AuditBudget:
    attacks: dict[str, Any]  # attack -> its Config
    eval_limit: int | None  # questions per split for the no-attack scores


BUDGETS = {
    "quick": AuditBudget(
        attacks={
            "finetune": finetune.Config(unrelated_n=(100,), forget_k=(5,), lr=1e-3, epochs=1,
                                        min_steps=10, max_len=80, eval_limit=100,
                                        lora=LoRAConfig(rank=16, alpha=16.0)),
            "directions": directions.Config(DirectionsConfig(), sweep_limit=50),
            "lens": lens.Config(limit=100),
            "gcg": gcg.Config(n_tokens=8, steps=10, search_width=32, topk=64, progress=False,
                              n_train=4),
            "prune": prune.Config(grid=(0.01, 0.05), eval_limit=50, n_forget=32, n_utility=32),
        }, eval_limit=200),
    "full": AuditBudget(attacks=dict(PRESETS["laptop"].attacks), eval_limit=None),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InterpError(f"unknown preset {name!r}; use one of {sorted(PRESETS)}")
    return PRESETS[name]
