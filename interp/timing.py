"""Seconds per step, collected from the loops that run them (training, GCG).

`with step_times() as times:` collects the wall time of every optimizer or search step run inside
the block (on a GPU, each step ends with a host read of its loss, so the time is the device's).
`interp plan` reads seconds per step this way from the real training and GCG loops; nothing is
recorded when no collector is open.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

_collectors: list[list[float]] = []


@contextmanager
def step_times() -> Iterator[list[float]]:
    """A block that collects the wall seconds of every step run inside it into the yielded list."""
    times: list[float] = []
    _collectors.append(times)
    try:
        yield times
    finally:
        _collectors.remove(times)


def record(seconds: float) -> None:
    """Add one step's seconds to every open `step_times()` collector."""
    for times in _collectors:
        times.append(seconds)


def median_after_warmup(times: list[float]) -> float:
    """The median seconds per step, the first (warm-up) step left out when there are others."""
    import statistics

    from interp.errors import InterpError

    if not times:
        raise InterpError("no step was timed")
    return statistics.median(times[1:] if len(times) > 1 else times)


def timed_calls(fn, steps: int, device) -> float:
    """Seconds per unit over `steps` calls of `fn` (each returns how many units it did)."""
    import time

    import torch

    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        units = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t) / max(1, units))
    return median_after_warmup(times)
