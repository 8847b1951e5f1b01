"""Execute the notebooks against a finished run and keep their outputs (`make notebooks`).

Each plotly figure is stored twice in its cell's output: the interactive figure and a static PNG
(kaleido), so the notebooks show their plots where no JavaScript runs (a repository browser).
Usage: python scripts/execute_notebooks.py [--run runs/laptop] [NOTEBOOK ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RENDERER = "plotly_mimetype+png"  # interactive figure + static image in every figure output


def execute(path: Path, run: Path, figures: Path, timeout: int) -> float:
    """Run one notebook top to bottom in a fresh kernel and save it with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    os.environ.update({"INTERP_RUN": str(run), "INTERP_NOTEBOOK_OUT": str(figures),
                       "PLOTLY_RENDERER": RENDERER})
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main() -> int:
    """Execute the notebooks named (default: all) against the run; exit 2 without one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        default=sorted((ROOT / "notebooks").glob("*.ipynb")))
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "laptop",
                        help="a finished `interp reproduce` folder (default: the laptop run)")
    parser.add_argument("--figures", type=Path, default=ROOT / "figures" / "notebooks")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()
    if not (args.run / "results.json").is_file():
        print(f"execute_notebooks: {args.run} is not a finished run (no results.json); run "
              "`make reproduce` first", file=sys.stderr)
        return 2
    args.figures.mkdir(parents=True, exist_ok=True)
    for path in args.notebooks:
        seconds = execute(path.resolve(), args.run.resolve(), args.figures.resolve(),
                          args.timeout)
        print(f"{path.name}: executed in {seconds:.0f} s, outputs kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
