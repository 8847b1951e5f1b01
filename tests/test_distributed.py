"""The smoke grid on a local Ray instance (2 CPUs, started here): same results as the serial run,
and a worker killed mid-run costs only its cell (Ray retries it; nothing is lost)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from interp.pipelines.reproduce import PRESETS, reproduce

METHODS = ("rmu", "npo", "dpo")

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install -e '.[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def _fresh_run(smoke_protected, folder: Path, methods=METHODS) -> Path:
    data, models, _ = smoke_protected
    shutil.copytree(data, folder / "data")
    for m in methods:
        shutil.copytree(models / m, folder / "models" / m)
    return folder


def _task_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ray::_run_cell_task" in cmd:
                pids.append(int(proc.name))
    return pids


def test_ray_grid_equals_the_serial_run(smoke_run, smoke_protected, local_ray, tmp_path):
    """Every attack of the RMU model (and the lens of the original) as Ray tasks, whose workers
    run with one thread: the rows equal the serial run's (two threads)."""
    smoke = PRESETS["smoke"]
    preset = replace(smoke, protections={"rmu": smoke.protections["rmu"]})
    reference = [r for r in smoke_run[1]["rows"] if r["model"] in ("original", "rmu")]
    run = _fresh_run(smoke_protected, tmp_path / "ray-run", ("rmu",))
    distributed = reproduce(preset, run, device="cpu", progress=False, executor="ray")
    assert sorted(distributed["rows"], key=_key) == sorted(reference, key=_key)
    assert distributed["timings"].keys() >= {"directions", "prune", "finetune", "gcg"}


def _key(row):
    return tuple(str(row[k]) for k in ("model", "attack", "split", "format", "mode"))


def test_a_killed_worker_costs_only_its_cell(smoke_run, smoke_protected, local_ray, tmp_path):
    smoke = PRESETS["smoke"]
    preset = replace(smoke, protections={"npo": smoke.protections["npo"]})
    # the uninterrupted reference: the serial smoke run's rows of the models this grid has
    reference = [r for r in smoke_run[1]["rows"] if r["model"] in ("original", "npo")]
    run = _fresh_run(smoke_protected, tmp_path / "killed", ("npo",))
    killed: list[int] = []

    def assassin():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            pids = _task_pids()
            if pids and (run / "attacks" / "original" / "lens" / "result.json").exists():
                os.kill(pids[0], signal.SIGKILL)  # a worker busy with an attack cell
                killed.append(pids[0])
            time.sleep(0.2)

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    result = reproduce(preset, run, device="cpu", progress=False, executor="ray")
    thread.join(timeout=1)
    assert killed, "no worker was killed: the grid finished first"
    assert sorted(result["rows"], key=_key) == sorted(reference, key=_key)


def test_audit_on_ray_equals_the_serial_audit(smoke_audit, local_ray, tmp_path):
    from interp.pipelines.audit import audit

    _, _, forget, retain, serial = smoke_audit
    distributed = audit(serial["original"], serial["unlearned"], forget, retain,
                        tmp_path / "audit", budget="quick", progress=False, executor="ray")
    assert distributed["executor"] == "ray"
    for key in ("no_attack", "attacks", "headline", "n_forget_test", "n_retain_test"):
        assert distributed[key] == serial[key], key


def test_ray_runs_the_plugins_as_the_serial_run(smoke_run, toy_run, toy_plugins, local_ray,
                                                tmp_path):
    """The toy attack and protection reach the Ray workers by the plugin mechanism alone (the
    workers are other processes): the resumed grid's rows equal the serial run's."""
    run = tmp_path / "ray-toys"
    shutil.copytree(smoke_run[0], run)
    distributed = reproduce("smoke", run, device="cpu", progress=False, executor="ray")
    assert any(r["attack"] == "zero-mlp" for r in distributed["rows"])
    assert sorted(distributed["rows"], key=_key) == sorted(toy_run[1]["rows"], key=_key)
