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
    times: list[float] = []
    _collectors.append(times)
    try:
        yield times
    finally:
        _collectors.remove(times)


def record(seconds: float) -> None:
    for times in _collectors:
        times.append(seconds)
