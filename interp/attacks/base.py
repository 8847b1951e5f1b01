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
`interp.registry` lists every such module (entry points, `--plugin`), so adding an attack is one
file: its `SPEC.presets` and `SPEC.budgets` put it in `interp reproduce` and `interp audit`, an
optional `cost(cfg, sizes)` and `probes(cfg)` put it in `interp plan` (`interp.cost`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, ClassVar, Mapping

from interp.registry import REGISTRIES, register, unregister  # noqa: F401 - re-exported
from interp.results import (  # noqa: F401 - the names an attack module uses, in one import
    RESULT_JSON,
    Baseline,
    Measured,
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
    """What the pipelines need to know of an attack: its place, what it reads, its settings."""

    name: str
    order: int  # position in the results table and in each stage of the pipelines
    needs_original: bool = False  # `run` takes the model before the protection
    on_original: bool = False  # also run on the unprotected model (the lens)
    summary: str = ""
    original_if: Callable[[Any], bool] | None = None  # needs the original for some configs
    # the config for one protected model (by protection name), where the recipe depends on it
    per_model: Callable[[Any, str], Any] | None = None
    # the attack's `Config` in each preset of `interp reproduce` (smoke, laptop, paper; a preset
    # it is missing from does not run it) and each budget of `interp audit` (quick, full)
    presets: Mapping[str, Any] = field(default_factory=dict)
    budgets: Mapping[str, Any] = field(default_factory=dict)
    # its finished folders are compared across protected models (`interp.attacks.compare`,
    # keyword `name`) when this says so of the config
    compared: Callable[[Any], bool] | None = None
    kind: ClassVar[str] = "attack"

    def config_for(self, cfg, method: str):
        """The config for the protected model `method` (`per_model` applied to `cfg` where
        given)."""
        return self.per_model(cfg, method) if self.per_model is not None else cfg

    def wants_original(self, cfg) -> bool:
        """Whether `run` needs the model before the protection (`original`) for this config."""
        return self.needs_original or (self.original_if is not None and self.original_if(cfg))


# ---------------------------------------------------------------------------------- registry
def registry() -> dict[str, ModuleType]:
    """Every attack module (name -> module), in table order (`interp.registry`)."""
    return REGISTRIES["attack"].modules()


def get(name: str) -> ModuleType:
    """The attack module named `name`."""
    return REGISTRIES["attack"].get(name)
