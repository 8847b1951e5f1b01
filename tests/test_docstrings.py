"""Every public name has a docstring: each name in `interp.__all__` (modules, classes, functions;
an instance by its class), and every public module, class, method and function of the package
(ruff's pydocstyle rules D100-D103, as `pyproject.toml` selects them)."""

from __future__ import annotations

import dataclasses
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import interp

ROOT = Path(__file__).parent.parent


def _doc(obj) -> str:
    """The docstring written for `obj`: its own for a module, class or function, its class's for
    an instance; a dataclass's generated signature ("Name(field: type, ...)") does not count."""
    if not (inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj)):
        obj = type(obj)
    doc = (obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__) or ""
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(
            f"{obj.__name__}("):
        return ""
    return doc.strip()


def test_every_public_name_has_a_docstring():
    missing = [name for name in interp.__all__
               if name != "__version__" and not _doc(getattr(interp, name))]
    assert not missing, f"public names without a docstring: {missing}"


def _ruff() -> str | None:
    beside = Path(sys.executable).parent / "ruff"
    return str(beside) if beside.is_file() else shutil.which("ruff")


def test_ruff_finds_no_missing_docstring_in_the_package():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the dev extra)")
    out = subprocess.run([ruff, "check", "interp", "--select", "D100,D101,D102,D103"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
