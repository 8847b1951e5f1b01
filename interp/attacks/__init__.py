"""Attack runners: each takes loaded models and a built data folder, writes `result.json` (last,
so its presence marks the run finished) and figures into its output folder, and returns the
result dict. A finished output folder is read back, not recomputed."""

from interp.attacks.activation import DirectionsAttackConfig, directions_attack, lens_attack

__all__ = ["DirectionsAttackConfig", "directions_attack", "lens_attack"]
