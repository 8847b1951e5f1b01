"""The files of a model folder written by `interp.model.load.save_model`, and the weights file's
stamp (size and modification time) that ties kept scores to the weights they were made with."""

from __future__ import annotations

from pathlib import Path

MODEL_JSON = "interp_model.json"
WEIGHTS = "model.safetensors"


def weights_stamp(folder: str | Path) -> tuple[int, int] | None:
    """(size, modification time in ns) of the folder's weights file; None when it has none."""
    f = Path(folder) / WEIGHTS
    if not f.is_file():
        return None
    st = f.stat()
    return (st.st_size, st.st_mtime_ns)
