"""A profile with overrides in one argument, as the benchmarks take it: 'fast:ema_decay=0,cutout=0'. Only the
benchmarks read such specs, so the parsing lives beside them, not in utils.config."""
from __future__ import annotations

import re
from typing import Any

import yaml

from utils.config import Config


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """A profile with overrides, as the benchmarks take it: 'fast:ema_decay=0,cutout=0' -> ('fast', {...}); a
    list value keeps its commas: 'quick:tta_weights=[2,2,1,1,1,1]'."""
    name, _, rest = spec.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, re.split(r",(?![^\[]*\])", rest)):    # the commas outside [...]
        key, sep, value = item.partition("=")
        if not sep or key not in Config.field_names():
            raise ValueError(f"bad override {item!r} in {spec!r}: use FIELD=VALUE with a field of utils.config.Config")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def spec_folder(spec: str) -> str:
    """A folder name for a spec's runs: 'fast:ema_decay=0,cutout=0' -> 'fast__ema_decay-0_cutout-0'."""
    return spec.replace(":", "__").replace(",", "_").replace("=", "-")
