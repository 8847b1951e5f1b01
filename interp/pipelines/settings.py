"""Settings a folder was computed with, kept beside it: a rerun with others is refused in one line
rather than mixing numbers (`interp reproduce` and `interp audit` both use these)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from interp.errors import InterpError
from interp.results import to_jsonable
from interp.store import read_json, write_json


def jsonable(value) -> Any:
    """`value` as it reads back from JSON (tuples as lists, dataclasses as dicts)."""
    return json.loads(json.dumps(to_jsonable(value)))


def config_differences(cfg, saved: dict, prefix: str = "") -> list[str]:
    """Settings of `cfg` whose stored value differs; a setting the stored config lacks (added
    since) is compared with its default, the value the old code behaved as; nested configs
    setting by setting."""
    out = []
    for f in dataclasses.fields(cfg):
        if f.name == "progress" or not f.init:
            continue
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            inner = saved.get(f.name, {})
            out += (config_differences(value, inner, key + ".") if isinstance(inner, dict)
                    else [key])
            continue
        if f.name in saved:
            old = saved[f.name]
        elif f.default is not dataclasses.MISSING:
            old = jsonable(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            old = jsonable(f.default_factory())
        else:
            continue
        if jsonable(value) != old:
            out.append(f"{key}={old!r} (now {jsonable(value)!r})")
    return out


def same_settings(path: Path, now: dict[str, Any], folder: Path, write: bool = True) -> None:
    """Write `now` to `path` the first time (with `write`); later, refuse (one line) any setting
    that differs from the stored one. Settings the stored file lacks are taken as matching (older
    folders)."""
    now = jsonable(now)
    if not path.is_file():
        if write:
            write_json(path, now)
        return
    saved = read_json(path)
    differ = [k for k in now if k in saved and saved[k] != now[k]]
    if differ:
        shown = ", ".join(f"{k}={saved[k]!r} (now {now[k]!r})" for k in differ[:3])
        raise InterpError(f"{folder} was computed with {shown}; use the same settings or a new "
                          "--out folder")
