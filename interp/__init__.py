"""interp: is the knowledge gone, or only hidden? Attacks on unlearned and safety-trained models,
on TransformerLens hooked models.

The public API (what a notebook imports), loaded on first use:

    import interp
    model = interp.load_model("smollm2")
    questions = interp.load_questions("bank:capitals")
    interp.evaluate(model, questions).accuracy

Protections and attacks are modules with one shape, `Config` / `run` / `Result`, reached by their
registry name (`interp.rmu`, `interp.gcg`, ...; `interp.attack_registry()` and
`interp.protection_registry()` list them, `interp.register(module)` adds one of your own), and
`interp.compare` across models. A `Result` has `rows()`, `plot()`, `to_json()` and `from_json()`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_NAMES = {
    # models
    "load_model": "interp.model.load", "save_model": "interp.model.load",
    "get_tokenizer": "interp.model.load", "load_tokenizer": "interp.model.load",
    "copy_model": "interp.model.state",
    "export_hf": "interp.model.export", "hook_name": "interp.model.hooks",
    "readout": "interp.model.hooks", "LoRAConfig": "interp.model.lora",
    "lora_adapters": "interp.model.lora", "merge_lora": "interp.model.lora",
    # data
    "Question": "interp.data.questions", "DataFolder": "interp.data.folder",
    "build_benchmark": "interp.data.build", "prepare_data": "interp.data.prepare",
    # scoring
    "evaluate": "interp.scoring", "EvalResult": "interp.scoring",
    "generate_greedy": "interp.scoring", "last_activations": "interp.activations",
    "iter_activations": "interp.activations",
    # the lens and directions, as functions
    "logit_lens": "interp.attacks.lens", "LensConfig": "interp.attacks.lens",
    "LensResult": "interp.attacks.lens",
    "DirectionsConfig": "interp.attacks.directions", "LayerDirections": "interp.attacks.ablation",
    "diff_in_means_models": "interp.attacks.directions",
    "diff_in_means_prompts": "interp.attacks.directions",
    "first_principal_component": "interp.attacks.directions",
    "ablation_hooks": "interp.attacks.ablation",
    "ablate_everywhere_hooks": "interp.attacks.ablation",
    "ablated": "interp.attacks.ablation", "project_out": "interp.attacks.ablation",
    "orthogonalize_weights": "interp.attacks.ablation",
    "ablation_sweep": "interp.attacks.ablation_sweep",
    "AblationSweep": "interp.attacks.ablation_sweep",
    "snip_scores": "interp.attacks.snip", "set_difference": "interp.attacks.snip",
    "pruned": "interp.attacks.snip",
    "quantize_model": "interp.attacks.quantize", "with_examples": "interp.attacks.icl",
    "rephrased": "interp.attacks.rephrase", "QuestionSets": "interp.attacks.sets",
    # the never-known control and what the rows say with it
    "annotate": "interp.pipelines.controls", "recovered_share": "interp.pipelines.controls",
    # pipelines
    "reproduce": "interp.pipelines.reproduce", "audit": "interp.pipelines.audit",
    "open_run": "interp.pipelines.run_folder", "RunFolder": "interp.pipelines.run_folder",
    "PRESETS": "interp.pipelines.presets",
    "plan": "interp.pipelines.plan", "PlanConfig": "interp.pipelines.plan",
    "random_model": "interp.model.shapes",
    "save_figure": "interp.plots", "InterpError": "interp.errors",
}
_ALIASES = {"load_questions": ("interp.data.sources", "load_source")}
_MODULES = {"compare": "interp.attacks.compare"}  # the cross-model analysis, not an attack
_FUNCTIONS = {"attack_registry": ("interp.registry", "attacks"),
              "protection_registry": ("interp.registry", "protections"),
              "register": ("interp.registry", "register"),
              "unregister": ("interp.registry", "unregister")}


def _registered(plugins: bool = True) -> list[str]:
    """Every attack's and protection's name (`interp.registry`; listing imports none of the
    built-in or installed ones)."""
    from interp.registry import REGISTRIES

    return [n for r in REGISTRIES.values() for n in r.names(plugins)]


# plugin files (`INTERP_PLUGINS`) are imported on first use, not by `import interp`
__all__ = sorted({*_NAMES, *_ALIASES, *_MODULES, *_FUNCTIONS, *_registered(False),
                  "__version__"})


def __getattr__(name: str):
    from interp.registry import REGISTRIES

    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _ALIASES:
        module, attr = _ALIASES[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _FUNCTIONS:
        module, attr = _FUNCTIONS[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif any(name in r.names() for r in REGISTRIES.values()):
        module = next(r.get(name) for r in REGISTRIES.values() if name in r.names())
        # a module with a function of its own name (`interp.tuned_lens(model, data)`) is
        # reached as that function; the module stays in `interp.attack_registry()`
        return getattr(module, name, module)
    else:
        raise AttributeError(f"module 'interp' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *_registered()})
