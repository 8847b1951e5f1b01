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
    folder: Path

    @property
    def results(self) -> dict:
        path = Path(self.folder) / "results.json"
        if not path.is_file():
            raise InterpError(f"no results in {self.folder}: run `interp reproduce` first")
        return read_json(path)

    @property
    def data(self) -> DataFolder:
        return DataFolder(Path(self.folder) / "data")

    @property
    def model_names(self) -> list[str]:
        return list(self.results["models"])

    def model_spec(self, name: str) -> str:
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
        return self.results["rows"]


def open_run(folder: str | Path) -> RunFolder:
    folder = Path(folder)
    if not (folder / "results.json").is_file():
        raise InterpError(f"no results in {folder}: run `interp reproduce --out {folder}` first")
    return RunFolder(folder)
