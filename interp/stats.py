"""Uncertainty of an accuracy: the Wilson score interval (95% by default).

Wilson's interval stays inside [0, 1] and keeps its coverage near 0 and 1 and for small n, where
the normal approximation does not; it is what the results table and the figures show.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) for `accuracy` = k / n correct answers out of `n`."""
    if n <= 0 or accuracy != accuracy:  # no questions, or NaN
        return (0.0, 1.0)
    k = round(accuracy * n)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the ends (no float residue)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two (low, high) intervals overlap."""
    return a[0] <= b[1] and b[0] <= a[1]
