"""`interp protect METHOD`: load a model by name, train a protection on a data folder, save it.

The unprotected model's scores are measured once per data folder and model (`baseline.json` in
the data folder) and shared by every method. A finished output folder is read back.
"""

from __future__ import annotations

from pathlib import Path

from interp.data.folder import as_data
from interp.model.load import load_model
from interp.protections import base
from interp.protections.base import Measure, ProtectionResult, measure
from interp.store import read_json, write_json


def baseline(model, model_spec: str, data) -> dict[str, Measure]:
    """`measure` of the unprotected model, cached in the data folder (same for every method)."""
    from interp.scoring import letter_rule

    data = as_data(data)
    path = data.folder / "baseline.json"
    cached = read_json(path) if path.is_file() else {}
    rule = letter_rule(model)
    key = model_spec if rule == "in-context" else f"{model_spec}|letter_ids={rule}"
    if key not in cached:
        cached[key] = {k: vars(v) for k, v in measure(model, data).items()}
        write_json(path, cached)
    return {k: Measure(**v) for k, v in cached[key].items()}


def protect(method: str, model_spec: str, data_dir: Path, out: Path, cfg=None, *,
            preset: str = "", device=None, dtype=None, tokenizer=None,
            progress: bool = True, letter_ids: str | None = None) -> ProtectionResult:
    """Train `method` (its `Config`, default: the method's own) on `model_spec`; save to `out`."""
    module = base.get(method)
    out = Path(out)
    if (done := base.finished_protection(module.Result, out)) is not None:
        return done  # finished earlier
    model = load_model(model_spec, device=device, dtype=dtype, tokenizer=tokenizer,
                       letter_ids=letter_ids)
    before = baseline(model, str(model_spec), data_dir)
    return module.run(model, data_dir, cfg, out=out, progress=progress, before=before,
                      about={"model": str(model_spec), "data": str(data_dir), "preset": preset})
