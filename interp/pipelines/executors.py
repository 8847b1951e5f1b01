"""Running the reproduction grid on Ray (an optional extra: `pip install -e '.[ray]'`).

Each cell of a stage becomes one Ray task asking for what it needs (as many CPUs as the driver
computes with threads, so its numbers equal a serial run's; one GPU at paper scale). A task reads
its inputs from the run folder and writes its result atomically to the same store, so a rerun
skips finished cells whichever executor ran them, and a lost worker costs only its cell: Ray
retries the task (`max_retries`), and the retry finds whatever the dead one finished.
"""

from __future__ import annotations

from typing import Callable

from interp.errors import InterpError


def _run_cell_task(payload: bytes, threads: int, plugins: list[str]):
    """One cell in a worker: the driver's plugins (`--plugin`, `register`) are loaded first, so
    the cell (whose configs may be a plugin's classes) can then be unpickled."""
    import torch
    from ray import cloudpickle

    from interp.registry import use_plugins

    torch.set_num_threads(threads)
    use_plugins(plugins)
    fn, cell = cloudpickle.loads(payload)
    return fn(cell)


def ray_executor(address: str | None = None, gpu: bool = False, num_cpus: int | None = None,
                 max_retries: int = 3):
    """A stage runner: `run_stage(fn, cells)` runs `fn(cell)` for every cell as Ray tasks."""
    try:
        import ray
    except ImportError:
        raise InterpError("--executor ray needs Ray: pip install -e '.[ray]'") from None
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False,
                 **kwargs)
    # each task computes with as many threads as this process (and asks Ray for as many CPUs):
    # float sums depend on the thread count, so the grid then equals the serial run bit for bit
    import torch

    threads = torch.get_num_threads()
    task = ray.remote(num_cpus=threads, num_gpus=1 if gpu else 0, max_retries=max_retries)(
        _run_cell_task)

    def run_stage(fn, cells):
        from ray import cloudpickle

        from interp.registry import plugin_entries

        plugins = plugin_entries()
        return ray.get([task.remote(cloudpickle.dumps((fn, c)), threads, plugins)
                        for c in cells])

    return run_stage


def serial_executor(fn: Callable, cells: list) -> list:
    """The default stage runner: `fn(cell)` for every cell in turn, in this process."""
    return [fn(c) for c in cells]


def stage_runner(executor: str, address: str | None = None, gpu: bool = False) -> Callable:
    """`run_stage(fn, cells)` for `--executor`: serial in this process, or Ray tasks."""
    if executor == "serial":
        return serial_executor
    if executor == "ray":
        return ray_executor(address, gpu=gpu)
    raise InterpError(f"unknown executor {executor!r}; use serial or ray")
