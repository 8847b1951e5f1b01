"""The attacks, one module each (`Config`, `run`, `Result`, `SPEC`; see `interp.attacks.base`).

`registry()` lists them in table order; `compare` is the cross-model analysis run after them.
"""

from interp.attacks.base import AttackSpec, Row, get, registry

__all__ = ["AttackSpec", "Row", "get", "registry"]
