"""Registries by discovery: the modules of a package that define `SPEC` (attacks, protections)."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def discover(package: str) -> dict[str, ModuleType]:
    pkg = importlib.import_module(package)
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{package}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if spec is not None:
            found.append((spec.order, spec.name, module))
    return {name: module for _, name, module in sorted(found, key=lambda t: t[:2])}
