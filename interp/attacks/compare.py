"""Do different protections rely on the same directions and neurons? (the paper's open question)

Reads finished attack folders: `directions.safetensors` from the directions attack (one unit
direction per layer) and `neurons.safetensors` from neuron-level pruning (a pruned-neuron mask per
layer), and compares every pair of models: cosine similarity of their directions per layer, and the
Jaccard overlap of their pruned neuron sets per layer and overall.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import ClassVar, Union

import torch
from safetensors.torch import load_file

from interp.attacks import base
from interp.attacks.directions import DIRECTIONS_FILE, DIRECTIONS_KEY
from interp.errors import InterpError
from interp.plots import layer_lines


def _load(folder: Path, file: str, key: str) -> torch.Tensor:
    path = Path(folder) / file
    if not path.is_file():
        raise InterpError(f"{path} is missing; run the attack that writes it first")
    try:
        return load_file(str(path))[key]
    except Exception as exc:
        raise InterpError(f"{path}: unreadable ({exc.__class__.__name__}); rerun the attack") \
            from None


def direction_cosines(dirs: dict[str, torch.Tensor]) -> dict[str, list[float | None]]:
    """Per pair "a vs b": cosine per layer (None where either model has no direction)."""
    out = {}
    for a, b in combinations(sorted(dirs), 2):
        da, db = dirs[a].double(), dirs[b].double()
        if da.shape != db.shape:
            raise InterpError(f"directions of {a} and {b} have different shapes")
        na, nb = da.norm(dim=-1), db.norm(dim=-1)
        cos = (da * db).sum(-1) / (na * nb).clamp(min=1e-30)
        out[f"{a} vs {b}"] = [None if (x == 0 or y == 0) else float(c)
                              for c, x, y in zip(cos, na, nb)]
    return out


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """|a & b| / |a | b| of two boolean masks; None when both are empty."""
    union = int((a | b).sum())
    return None if union == 0 else int((a & b).sum()) / union


def neuron_overlaps(neurons: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per pair "a vs b" of pruned-neuron masks (n_layers, d_mlp): the Jaccard overlap overall and
    per layer, and the two set sizes."""
    out = {}
    for a, b in combinations(sorted(neurons), 2):
        na, nb = neurons[a].bool(), neurons[b].bool()
        if na.shape != nb.shape:
            raise InterpError(f"pruned neuron sets of {a} and {b} have different shapes")
        out[f"{a} vs {b}"] = {"overall": jaccard(na, nb),
                              "per_layer": [jaccard(x, y) for x, y in zip(na, nb)],
                              "sizes": [int(na.sum()), int(nb.sum())]}
    return out


@dataclass
class Result(base.Result):
    """Per pair "a vs b": `direction_cosine` (one cosine per layer, None where either model has
    no direction) and `neuron_jaccard` (overall, per layer, and the two set sizes)."""

    direction_cosine: dict[str, list[float | None]] = field(default_factory=dict)
    neuron_jaccard: dict[str, dict] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    figure_stem: ClassVar[str] = "direction_cosine"

    def plot(self):
        """Cosine per layer for every pair of models; None when no directions were compared."""
        if not self.direction_cosine:
            return None
        return layer_lines({k: [float("nan") if c is None else c for c in v]
                            for k, v in self.direction_cosine.items()}, chance=None,
                           ytitle="cosine", title="Cosine between protections' directions per "
                                                  "layer")

    def extra_figures(self) -> dict:
        """`neuron_jaccard`: the pruned-neuron overlap per layer for every pair (none without neuron
        sets)."""
        if not self.neuron_jaccard:
            return {}
        return {"neuron_jaccard": layer_lines(
            {k: [float("nan") if j is None else j for j in v["per_layer"]]
             for k, v in self.neuron_jaccard.items()}, chance=None, ytitle="Jaccard",
            title="Overlap of pruned neuron sets per layer")}


Source = Union[Path, str, torch.Tensor]


def run(directions: dict[str, Source] | None = None, prune: dict[str, Source] | None = None,
        *, out: Path | None = None) -> Result:
    """Compare protected models: each value is a finished attack folder (directions / neuron-
    level prune) or the tensor itself (`Result.dirs.directions`, `Result.neurons`)."""
    if (done := base.finished(Result, out)) is not None:
        return done
    directions, prune = directions or {}, prune or {}
    result = Result()
    if len(directions) >= 2:
        dirs = {m: _tensor(f, DIRECTIONS_FILE, DIRECTIONS_KEY)
                for m, f in directions.items()}
        result.direction_cosine = direction_cosines(dirs)
    if len(prune) >= 2:
        neurons = {m: _tensor(f, "neurons.safetensors", "neurons") for m, f in prune.items()}
        result.neuron_jaccard = neuron_overlaps(neurons)
    if not result.direction_cosine and not result.neuron_jaccard:
        raise InterpError("nothing to compare: give at least two models' directions or pruning")
    return base.save(result, out)


def _tensor(source: Source, file: str, key: str) -> torch.Tensor:
    # tensors of a result may live on a GPU; those read from a folder are on the CPU
    return (source.detach().cpu() if isinstance(source, torch.Tensor)
            else _load(Path(source), file, key))
