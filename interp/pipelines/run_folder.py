"""A finished `interp reproduce` run folder, opened from anywhere: its results, its data, its
models. Paths recorded in `results.json` are relative to the run folder, so a moved or copied
run opens the same from any working directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from interp.data.folder import DataFolder
from interp.errors import InterpError
from interp.store import read_json


@dataclass(frozen=True)
class RunFolder:
    """A finished `interp reproduce` run folder (see `open_run`)."""

    folder: Path

    @property
    def results(self) -> dict:
        """The run's `results.json`: rows, timings, models."""
        path = Path(self.folder) / "results.json"
        if not path.is_file():
            raise InterpError(f"no results in {self.folder}: run `interp reproduce` first")
        return read_json(path)

    @property
    def data(self) -> DataFolder:
        """The run's benchmark data folder."""
        return DataFolder(Path(self.folder) / "data")

    @property
    def model_names(self) -> list[str]:
        """The run's model names: "original" and each protection."""
        return list(self.results["models"])

    def model_spec(self, name: str) -> str:
        """What loads model `name` (a folder inside the run resolves from there, else the spec as
        recorded)."""
        models = self.results["models"]
        if name not in models:
            raise InterpError(f"no model {name!r} in {self.folder}; one of {sorted(models)}")
        spec = models[name]
        inside = Path(self.folder) / spec
        return str(inside) if inside.exists() else spec

    def model(self, name: str, **load_kwargs):
        """Load one of the run's models ("original", or a protection's name)."""
        from interp.model.load import load_model

        return load_model(self.model_spec(name), **load_kwargs)

    def rows(self) -> list[dict]:
        """Every measurement of the run, as `Row` JSON objects."""
        return self.results["rows"]


def open_run(folder: str | Path) -> RunFolder:
    """The `interp reproduce` run in `folder`; an `InterpError` if it has no `results.json`."""
    folder = Path(folder)
    if not (folder / "results.json").is_file():
        raise InterpError(f"no results in {folder}: run `interp reproduce --out {folder}` first")
    domains = read_json(folder / "results.json").get("domains")
    if domains:  # the paper preset: one run per forget source
        names = ", ".join(str(folder / d) for d in domains)
        raise InterpError(f"{folder} holds one run per domain; open one of {names}")
    return RunFolder(folder)
