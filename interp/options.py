"""Dataclass configs as command-line options: one flag per field, defaults from the config.

Fields of nested configs (an attack's `lora`, `directions`, `lens`) become flags of their own
(`--rank`), prefixed by the nested field's name where two would clash (`--lora-seed`). Only the
flags given on the command line change the base config (a preset's, or the `Config` defaults);
`--set KEY=VALUE` (JSON values, dotted keys for nested fields) reaches any field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from interp.errors import InterpError


@dataclass(frozen=True)
class Option:
    """One command-line flag of a config field: the flag, its argparse destination, the field's path
    through nested configs, and its type."""

    flag: str  # "--skip-first"
    dest: str  # argparse destination
    path: tuple[str, ...]  # ("directions", "skip_first")
    kind: Any  # the field's type


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp) -> bool:
    return dataclasses.is_dataclass(tp)


def _leaves(cls, path=()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name == "progress":
            continue
        tp = hints[f.name]
        if _is_config(tp):
            out += _leaves(tp, path + (f.name,))
        else:
            out.append((path + (f.name,), tp))
    return out


def options(cls) -> list[Option]:
    """One option per leaf field of the config class `cls`."""
    leaves = _leaves(cls)
    names = [p[-1] for p, _ in leaves]
    out = []
    for path, tp in leaves:
        name = path[-1] if names.count(path[-1]) == 1 or len(path) == 1 else "_".join(path[-2:])
        out.append(Option("--" + name.replace("_", "-"), "cfg__" + "__".join(path), path, tp))
    return out


def _base_type(tp):
    """(the type without None, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def parse_value(text: str, tp, flag: str) -> Any:
    """A command-line string as the field's type: numbers, booleans, comma-separated tuples,
    "none" for optional fields."""
    tp, optional = _base_type(tp)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    origin = typing.get_origin(tp)
    if origin is tuple:
        item = (typing.get_args(tp) or (str,))[0]
        words = [w.strip() for w in text.split(",") if w.strip()]
        return tuple(parse_value(w, item, flag) for w in words)
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise InterpError(f"{flag} takes true or false, got {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            what = "whole numbers" if tp is int else "numbers"
            raise InterpError(f"{flag} takes {what} (comma-separated where it takes several), "
                              f"got {text!r}") from None
    return text


def _default_text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or '""'
    return str(value)


def add_config_options(parser: argparse.ArgumentParser, cls, base=None) -> None:
    """Add one flag per field of `cls`; help shows the default (of `base` when given)."""
    base = base if base is not None else cls()
    group = parser.add_argument_group(f"settings ({cls.__module__}.{cls.__qualname__})")
    taken = {a for action in parser._actions for a in action.option_strings}
    for opt in options(cls):
        if opt.flag in taken:
            continue
        default = get_path(base, opt.path)
        if _base_type(opt.kind) == (bool, False):
            group.add_argument(opt.flag, dest=opt.dest, default=argparse.SUPPRESS,
                               action=argparse.BooleanOptionalAction,
                               help=f"default: {_default_text(default)}")
            continue
        group.add_argument(opt.flag, dest=opt.dest, default=argparse.SUPPRESS,
                           metavar=_metavar(opt.kind),
                           help=f"default: {_default_text(default)}")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="set any setting by name (JSON value; dotted keys for nested ones)")


def _metavar(tp) -> str:
    tp, _ = _base_type(tp)
    if typing.get_origin(tp) is tuple:
        return "A,B,..."
    return {int: "N", float: "X", bool: "BOOL"}.get(tp, "TEXT")


def get_path(cfg, path: tuple[str, ...]):
    """The value of the (nested) field at `path`, e.g. ("directions", "skip_first")."""
    for name in path:
        cfg = getattr(cfg, name)
    return cfg


def set_path(cfg, path: tuple[str, ...], value):
    """A copy of `cfg` with the (nested) field at `path` set to `value` (`dataclasses.replace` at
    each level)."""
    if len(path) == 1:
        return dataclasses.replace(cfg, **{path[0]: value})
    inner = set_path(getattr(cfg, path[0]), path[1:], value)
    return dataclasses.replace(cfg, **{path[0]: inner})


def config_from_args(base, args: argparse.Namespace, label: str = "setting"):
    """`base` with the fields the command line gave (typed flags, then `--set`)."""
    cfg = base
    for opt in options(type(base)):
        if hasattr(args, opt.dest):
            value = getattr(args, opt.dest)
            if not isinstance(value, bool):  # --flag / --no-flag arrive parsed
                value = parse_value(value, opt.kind, opt.flag)
            cfg = set_path(cfg, opt.path, value)
    return apply_settings(cfg, getattr(args, "set", None) or [], label)


def apply_settings(cfg, pairs: list[str], label: str = "setting"):
    """`KEY=VALUE` pairs (JSON values) applied to a config; unknown keys are refused."""
    known = {".".join(o.path): o for o in options(type(cfg))}
    known.update({o.path[-1]: o for o in options(type(cfg))})
    for pair in pairs:
        if "=" not in pair:
            raise InterpError(f"--set takes KEY=VALUE, got {pair!r}")
        key, text = pair.split("=", 1)
        if key not in known:
            raise InterpError(f"unknown {label} {key!r}; use one of "
                              f"{sorted(k for k in known if '.' not in k)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = parse_value(text, known[key].kind, f"--set {key}")
        if isinstance(value, list):
            value = tuple(value)
        cfg = set_path(cfg, known[key].path, value)
    return cfg
