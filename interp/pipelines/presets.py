"""Scales as presets: which model and data, and every protection's and attack's `Config`.

A preset is only settings: the same code runs the smoke model in the tests, SmolLM2 on a laptop
and Zephyr-7B at paper scale. A scale's own settings (model, data, dtype) are here; each
protection's and attack's `Config` for it is in that module's `SPEC.presets` (and `SPEC.budgets`
for `interp audit`), so adding an attack is one file. An attack missing from a preset does not run
in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from interp.errors import InterpError


@dataclass(frozen=True)
class Domain:
    """One forget source of a preset that runs several (the paper's WMDP-bio and WMDP-cyber): its
    questions, their subject, and the protected models loaded for it (method -> model spec)."""

    name: str
    forget: str  # a question source (`load_source`): "wmdp-bio", a parquet file, ...
    subject: str | None = None
    external: dict[str, str] = field(default_factory=dict)


# The authors' protected models (ethz-spylab/unlearning-vs-safety, scripts/*.sh): the public RMU
# model was trained on bio and cyber at once; NPO and DPO have one model per subset.
ZEPHYR = "HuggingFaceH4/zephyr-7b-beta"
PAPER_DOMAINS = (
    Domain("bio", "wmdp-bio", "biology", {"rmu": "cais/Zephyr_RMU",
                                          "npo": "J4Q8/zephyr-npo-bio",
                                          "dpo": "J4Q8/zephyr-dpo-bio"}),
    Domain("cyber", "wmdp-cyber", "cybersecurity", {"rmu": "cais/Zephyr_RMU",
                                                    "npo": "J4Q8/zephyr-npo-cyber",
                                                    "dpo": "J4Q8/zephyr-dpo-cyber"}),
)


@dataclass
class Preset:
    """A scale of `interp reproduce`: the benchmark, each protection's and attack's config, the
    model (None: the benchmark's), and at paper scale the question sources, externally protected
    models, tokenizer, dtype and GPU count."""

    name: str
    data: str  # benchmark preset for `build_benchmark`
    protections: dict[str, Any] = field(default_factory=dict)  # method -> its Config
    attacks: dict[str, Any] = field(default_factory=dict)  # attack -> its Config
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
    # a scale that adds to another: a module without settings for this one takes `base`'s
    base: str | None = None
    # several forget sources, each run in its own subfolder with its own external models (the
    # fields above are then the first domain's); `domain` names the one a sub-run is
    domains: tuple[Domain, ...] = ()
    domain: str = ""

    @property
    def methods(self) -> tuple[str, ...]:
        """Every protected model's name: the trained protections, then the loaded (external)
        ones."""
        return tuple(dict.fromkeys([*self.protections, *self.external]))


# What a scale is, beyond the protections' and attacks' own settings (their `SPEC.presets`).
SCALES: dict[str, Preset] = {
    "smoke": Preset(name="smoke", data="smoke"),
    "laptop": Preset(name="laptop", data="laptop"),
    # the laptop run and what did not fit its time: the finetuning attack's forget cells again at
    # two more seeds (`interp.attacks.seeds`) and the rephrasing attack; run in the laptop run's
    # folder, it adds those cells
    "extended": Preset(name="extended", data="laptop", base="laptop"),
    # WMDP-bio and WMDP-cyber, each against the authors' own protected models (loaded, not
    # trained: `--train-protections` trains them instead)
    "paper": Preset(
        name="paper", data="paper", model=ZEPHYR, sources=("wmdp-bio", "mmlu"),
        subject="biology", external=dict(PAPER_DOMAINS[0].external), tokenizer=ZEPHYR,
        dtype="bfloat16", letter_ids="official",  # the official scorer's rule
        domains=PAPER_DOMAINS),
}


def domain_presets(p: Preset) -> list[Preset]:
    """The preset once per forget source (itself when it has one): sources, subject and external
    models of that domain."""
    if not p.domains:
        return [p]
    retain = p.sources[1] if p.sources else "mmlu"
    # the preset's loaded methods stay loaded: the domain's own model where it names one, else
    # the preset's (a method trained by `train_protections` is no longer in `p.external`)
    return [replace(p, sources=(d.forget, retain), subject=d.subject,
                    external={m: d.external.get(m, s) for m, s in p.external.items()},
                    domains=(), domain=d.name) for d in p.domains]


def train_protections(p: Preset, methods: str = "all") -> Preset:
    """The preset with the named protections (comma-separated; "all": every one it has a config
    for) trained instead of loaded."""
    names = list(p.protections) if methods == "all" else [m for m in methods.split(",") if m]
    unknown = [m for m in names if m not in p.protections]
    if unknown:
        raise InterpError(f"--train-protections: preset {p.name!r} has no training settings for "
                          f"{', '.join(unknown)}; it has {', '.join(p.protections) or 'none'}")
    return replace(p, external={m: s for m, s in p.external.items() if m not in names})


def _configs(modules: dict, name: str, table: str, base: str | None = None) -> dict[str, Any]:
    out = {}
    for n, m in modules.items():
        configs = getattr(m.SPEC, table)
        if name in configs or base in configs:
            out[n] = configs[name] if name in configs else configs[base]
    return out


def build_preset(name: str) -> Preset:
    """A scale with the settings every registered protection and attack gives it."""
    from interp.registry import attacks, protections

    if name not in SCALES:
        raise InterpError(f"unknown preset {name!r}; use one of {sorted(SCALES)}")
    scale = SCALES[name]
    return replace(scale, protections=_configs(protections(), name, "presets", scale.base),
                   attacks=_configs(attacks(), name, "presets", scale.base))


class _Presets(Mapping):
    """`PRESETS[name]`: the preset as the registry stands now (plugins included)."""

    def __getitem__(self, name: str) -> Preset:
        if name not in SCALES:
            raise KeyError(name)
        return build_preset(name)

    def __iter__(self):
        return iter(SCALES)

    def __len__(self) -> int:
        return len(SCALES)


PRESETS: Mapping[str, Preset] = _Presets()


@dataclass
class AuditBudget:
    """What `interp audit` runs at one budget: each attack's config, and questions per split for the
    no-attack scores (None: all)."""

    attacks: dict[str, Any]  # attack -> its Config
    eval_limit: int | None  # questions per split for the no-attack scores


AUDIT_LIMITS = {"quick": 200, "full": None}  # questions per split for the no-attack scores


def audit_budget(name: str) -> AuditBudget:
    """An audit budget: every registered attack's config for it (`SPEC.budgets`)."""
    from interp.registry import attacks

    if name not in AUDIT_LIMITS:
        raise InterpError(f"unknown budget {name!r}; use one of {sorted(AUDIT_LIMITS)}")
    return AuditBudget(attacks=_configs(attacks(), name, "budgets"),
                       eval_limit=AUDIT_LIMITS[name])


def get_preset(name: str) -> Preset:
    """The preset named `name` (smoke, laptop, extended, paper)."""
    return build_preset(name)
