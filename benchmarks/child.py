"""Running a module of this package in another interpreter, as `python -m benchmarks...`: the
fresh process a memory measurement needs, or nanoGCG's own environment (which has neither this
package nor `interp` installed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent  # the folder holding benchmarks/ (and interp/)


def run_module(python: str, module: str, args: list[str],
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m module *args`, output captured as text. The checkout goes first on the child's
    PYTHONPATH, so any interpreter finds this package (and this checkout's `interp`); the working
    directory and the rest of the environment (`env`, default ours) are left as they are."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), env.get("PYTHONPATH")) if p)
    return subprocess.run([python, "-m", module, *args], capture_output=True, text=True, env=env)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    """The JSON object a child printed as its last line of output."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


def last_error(proc: subprocess.CompletedProcess) -> str:
    """The last line a failed child wrote to stderr, or its exit status when it wrote none."""
    return (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
