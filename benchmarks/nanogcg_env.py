"""Where nanoGCG runs: its own environment (nanoGCG pins transformers <= 4.47.1, so it cannot
share ours), found, checked and never created or installed here; `make bench-peers` sets it up."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path


def read_requirements(path: Path) -> list[str]:
    """The requirement lines of a pip requirements file, comments and blank lines left out."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


# The one list of nanoGCG's requirements; `make bench-peers` installs the same file.
NANOGCG_REQUIREMENTS = Path(__file__).resolve().parent / "requirements" / "nanogcg.txt"
NANOGCG_REQS = read_requirements(NANOGCG_REQUIREMENTS)

NANOGCG_ENV = "INTERP_NANOGCG_PYTHON"  # the interpreter of an environment where nanoGCG imports
NANOGCG_VENV = ".venv-nanogcg"  # else this environment, relative to the working directory


def nanogcg_install_command() -> str:
    """What sets up nanoGCG's own environment (nanoGCG pins transformers <= 4.47.1, so it cannot
    share ours): `make bench-peers`, or the same thing spelled out."""
    reqs = " ".join(shlex.quote(r) for r in NANOGCG_REQS)
    return (f"make bench-peers (or: python3 -m venv {NANOGCG_VENV} && "
            f"{NANOGCG_VENV}/bin/pip install {reqs})")


def _imports_nanogcg(py: str) -> bool:
    try:
        proc = subprocess.run([py, "-c", "import nanogcg"], capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def find_nanogcg() -> tuple[str | None, str]:
    """nanoGCG's interpreter and, when there is none, why. Looks at $INTERP_NANOGCG_PYTHON, else
    .venv-nanogcg/bin/python in the working directory, and checks that it imports nanogcg.
    Never creates an environment or installs anything."""
    given = os.environ.get(NANOGCG_ENV)
    if given:
        py, where = shutil.which(given) or given, f"{NANOGCG_ENV}={given}"
    else:
        py = str(Path.cwd() / NANOGCG_VENV / "bin" / "python")  # not resolved: keep the venv
        where = f"{NANOGCG_VENV}/bin/python"
    if not Path(py).is_file():
        return None, f"nanoGCG's environment is not set up (no {where})"
    if not _imports_nanogcg(py):
        return None, f"{where} cannot import nanogcg"
    return py, ""


def nanogcg_python() -> str | None:
    """The interpreter that runs nanoGCG, or None when it is not set up (see find_nanogcg)."""
    return find_nanogcg()[0]
