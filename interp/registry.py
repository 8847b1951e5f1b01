"""One registry of attacks and protections: the names every stage reads.

Where a module comes from:
- the built-ins and any installed plugin package are named by the package entry-point groups
  `interp.attacks` and `interp.protections` (`pyproject.toml`: `NAME = "package.module"`);
- a module outside any package (a file of your own) joins with `--plugin PATH_OR_MODULE` on the
  command line, `interp.register(module)` in a notebook, or the `INTERP_PLUGINS` environment
  variable (entries separated by `os.pathsep`). `register` and `--plugin` write the module into
  `INTERP_PLUGINS`, so every process a run starts (Ray workers, a CLI subprocess) finds it too.
Listing names imports nothing; a module is imported, and its shape checked against
`AttackModule` / `ProtectionModule`, when first asked for.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from interp.errors import InterpError

PLUGINS_ENV = "INTERP_PLUGINS"
GROUPS = {"attack": "interp.attacks", "protection": "interp.protections"}


@runtime_checkable
class AttackModule(Protocol):
    """What an attack module holds (see `interp.attacks.base`)."""

    SPEC: Any  # an `AttackSpec`
    Config: type  # a dataclass of the attack's knobs
    Result: type  # a dataclass: to_json / from_json / rows / plot

    def run(self, model, data, cfg=None, *, original=None, out=None, progress=True) -> Any:
        """Attack `model` on a data folder; returns the module's `Result` (written to `out`)."""


@runtime_checkable
class ProtectionModule(Protocol):
    """What a protection module holds (see `interp.protections.base`)."""

    SPEC: Any  # a `ProtectionSpec`
    Config: type
    Result: type

    def run(self, model, data, cfg=None, *, out=None, progress=True, before=None,
            about=None) -> Any:
        """Protect `model` in place, measuring it before and after; returns the `Result`."""

    def train(self, model, data, cfg, run_dir=None, progress=True) -> Any:
        """The method itself, in place: returns (losses, extras)."""


PROTOCOLS = {"attack": AttackModule, "protection": ProtectionModule}
MEMBERS = {"attack": ("SPEC", "Config", "Result", "run"),
           "protection": ("SPEC", "Config", "Result", "run", "train")}


class Registry:
    """The modules of one kind, by name: built-ins and installed plugins by entry point,
    plugins registered in this process or named in `INTERP_PLUGINS`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._modules: dict[str, ModuleType] = {}  # imported and checked
        self._removed: set[str] = set()

    def _entry_points(self) -> dict[str, str]:
        return {ep.name: ep.value for ep in
                importlib.metadata.entry_points(group=GROUPS[self.kind])
                if ep.name not in self._removed}

    def names(self, plugins: bool = True) -> list[str]:
        """Every name, without importing a built-in or installed module (alphabetical;
        `modules()` gives table order); `plugins=False` leaves out `INTERP_PLUGINS` files not
        loaded yet (naming them means importing them)."""
        if plugins:
            load_env_plugins()
        return sorted({*self._entry_points(), *self._modules} - self._removed)

    def get(self, name: str) -> ModuleType:
        """The module named `name`, imported and checked on first use."""
        load_env_plugins()
        if name in self._modules:
            return self._modules[name]
        target = self._entry_points().get(name)
        if target is None:
            raise InterpError(f"unknown {self.kind} {name!r}; use one of {self.names()}")
        module = check_module(importlib.import_module(target), self.kind)
        if module.SPEC.name != name:
            raise InterpError(f"{target} declares {self.kind} {module.SPEC.name!r}, but its "
                              f"entry point names it {name!r}")
        self._modules[name] = module
        return module

    def modules(self) -> dict[str, ModuleType]:
        """Every module (name -> module) in table order (`SPEC.order`, then name)."""
        found = [self.get(n) for n in self.names()]
        return {m.SPEC.name: m for m in sorted(found, key=lambda m: (m.SPEC.order, m.SPEC.name))}

    def add(self, module: ModuleType) -> None:
        """Register `module` under its `SPEC.name` (replacing one of that name, and undoing a
        `remove`)."""
        self._removed.discard(module.SPEC.name)
        self._modules[module.SPEC.name] = module

    def remove(self, name: str) -> None:
        """Unlist the module named `name` (a built-in or installed one stays hidden until added
        again)."""
        self._modules.pop(name, None)
        if name in self._entry_points():
            self._removed.add(name)


REGISTRIES = {kind: Registry(kind) for kind in GROUPS}


def kind_of(module: ModuleType) -> str:
    """"attack" or "protection", from the type of the module's `SPEC`."""
    spec = getattr(module, "SPEC", None)
    kind = getattr(spec, "kind", None)
    if kind not in GROUPS:
        raise InterpError(f"{module.__name__} is neither an attack nor a protection: its SPEC "
                          "must be an AttackSpec or a ProtectionSpec")
    return kind


def check_module(module: ModuleType, kind: str | None = None) -> ModuleType:
    """Raise a one-line `InterpError` unless `module` has the shape of its kind."""
    declared = kind_of(module)
    kind = kind or declared
    article = {"attack": "an", "protection": "a"}
    if declared != kind:
        raise InterpError(f"{module.__name__} declares {article[declared]} {declared}, not "
                          f"{article[kind]} {kind}")
    protocol = PROTOCOLS[kind]
    if not isinstance(module, protocol):
        missing = [n for n in MEMBERS[kind] if not hasattr(module, n)]
        raise InterpError(f"{module.__name__} is not {article[kind]} {kind} module: it has no "
                          f"{', '.join(missing)} (see interp.registry.{protocol.__name__})")
    return module


# ------------------------------------------------------------------------------------ plugins
_LOADED: dict[str, ModuleType] = {}  # plugin entry -> its module, once per process


def import_plugin(entry: str) -> ModuleType:
    """A plugin module by dotted name or by the path of a `.py` file."""
    if entry in _LOADED:
        return _LOADED[entry]
    if entry.endswith(".py") or os.sep in entry:
        path = Path(entry).resolve()
        if not path.is_file():
            raise InterpError(f"plugin {entry} does not exist")
        name = f"interp_plugin_{path.stem.replace('-', '_')}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise InterpError(f"plugin {entry} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(entry)
        except ImportError as exc:
            raise InterpError(f"plugin {entry!r} cannot be imported: {exc}") from None
    _LOADED[entry] = module
    return module


def _env_entries() -> list[str]:
    return [e for e in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if e]


def load_env_plugins() -> None:
    """Register every plugin named in `INTERP_PLUGINS` not yet loaded in this process."""
    for entry in _env_entries():
        if entry not in _LOADED:
            module = import_plugin(entry)
            REGISTRIES[kind_of(module)].add(check_module(module))


def _entry_of(module: ModuleType) -> str:
    """How another process finds `module`: the entry it was loaded by, else its file."""
    for entry, loaded in _LOADED.items():
        if loaded is module:
            return entry
    if getattr(module, "__file__", None):
        return str(Path(module.__file__).resolve())
    raise InterpError(f"{module.__name__} has no file: another process could not load it")


def plugin_entries() -> list[str]:
    """The plugins of this process, as `INTERP_PLUGINS` names them (for a worker to load)."""
    return _env_entries()


def use_plugins(entries: list[str]) -> None:
    """In a worker process: load the plugins its driver had (`plugin_entries()`)."""
    known = _env_entries()
    os.environ[PLUGINS_ENV] = os.pathsep.join([*known, *(e for e in entries if e not in known)])
    load_env_plugins()


def register(module: ModuleType | str) -> ModuleType:
    """Add an attack or a protection from outside the package (a module, a dotted name or a
    `.py` path); checked against its protocol; every process this one starts finds it too."""
    if isinstance(module, str):
        entry, module = module, import_plugin(module)
    else:
        entry = _entry_of(module)
        _LOADED.setdefault(entry, module)
    REGISTRIES[kind_of(module)].add(check_module(module))
    entries = _env_entries()
    if entry not in entries:
        os.environ[PLUGINS_ENV] = os.pathsep.join([*entries, entry])
    return module


def unregister(name: str) -> None:
    """Remove an attack or protection by name from this process and the processes it starts."""
    for registry in REGISTRIES.values():
        module = registry._modules.get(name)
        registry.remove(name)
        if module is not None:
            kept = [e for e in _env_entries() if _LOADED.get(e) is not module]
            os.environ[PLUGINS_ENV] = os.pathsep.join(kept)


def attacks() -> dict[str, ModuleType]:
    """Every attack module (name -> module), in table order."""
    return REGISTRIES["attack"].modules()


def protections() -> dict[str, ModuleType]:
    """Every protection module (name -> module), in order."""
    return REGISTRIES["protection"].modules()


def get_attack(name: str) -> ModuleType:
    """The attack module named `name`."""
    return REGISTRIES["attack"].get(name)


def get_protection(name: str) -> ModuleType:
    """The protection module named `name`."""
    return REGISTRIES["protection"].get(name)

