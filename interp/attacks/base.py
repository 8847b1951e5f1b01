"""The one shape every attack shares, and the registry that lists them.

An attack is one module of `interp.attacks` holding
- `Config`: a dataclass with the attack's knobs and their defaults (the CLI reads its options from
  it, presets hold instances of it);
- `run(model, data, cfg=None, *, original=None, out=None, progress=True) -> Result`: attack a
  protected model (`original` is the model before the protection, for attacks that need it) on a
  data folder; with `out`, the result and its figures are written there and a finished folder is
  read back instead of recomputed;
- `Result`: a dataclass with `to_json()` / `from_json()`, `rows(model)` (the results-table rows it
  contributes), `plot()` (a plotly `Figure`) and optionally `plot_models(results)` (one figure for
  several protected models);
- `SPEC = AttackSpec(...)`: what the pipelines need to know to schedule it.
`registry()` finds every such module, so adding an attack is one new file plus a preset entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from interp.errors import InterpError
from interp.registry import discover
from interp.results import (  # noqa: F401 - the names an attack module uses, in one import
    RESULT_JSON,
    Baseline,
    Result,
    Row,
    Scores,
    finished,
    from_jsonable,
    not_saved,
    save,
    score_rows,
    to_jsonable,
)


@dataclass(frozen=True)
class AttackSpec:
    name: str
    order: int  # position in the results table and in each stage of the pipelines
    needs_original: bool = False  # `run` takes the model before the protection
    on_original: bool = False  # also run on the unprotected model (the lens)
    summary: str = ""
    original_if: Callable[[Any], bool] | None = None  # needs the original for some configs
    # the config for one protected model (by method name), where the recipe depends on it
    per_model: Callable[[Any, str], Any] | None = None

    def config_for(self, cfg, method: str):
        return self.per_model(cfg, method) if self.per_model is not None else cfg

    def wants_original(self, cfg) -> bool:
        return self.needs_original or (self.original_if is not None and self.original_if(cfg))


# ---------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, ModuleType] = {}


def registry() -> dict[str, ModuleType]:
    """Every attack module (name -> module), in table order."""
    if not _REGISTRY:
        _REGISTRY.update(discover("interp.attacks"))
    return _REGISTRY


def register(module: ModuleType) -> None:
    """Add an attack module from outside the package (a plugin with the same shape)."""
    for name in ("SPEC", "Config", "Result", "run"):
        if not hasattr(module, name):
            raise InterpError(f"{module.__name__} is not an attack: it has no {name}")
    attacks = registry()
    attacks[module.SPEC.name] = module
    ordered = sorted(attacks.items(), key=lambda kv: (kv[1].SPEC.order, kv[0]))
    attacks.clear()
    attacks.update(ordered)


def unregister(name: str) -> None:
    registry().pop(name, None)


def get(name: str) -> ModuleType:
    attacks = registry()
    if name not in attacks:
        raise InterpError(f"unknown attack {name!r}; use one of {sorted(attacks)}")
    return attacks[name]
