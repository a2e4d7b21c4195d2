"""Nested dataclass configs from YAML mappings, with ``section.key=value`` overrides.

Shared by the trainer (``train/config.py``) and the data engine (``data_engine/config.py``):
unknown keys and wrong shapes raise ``ValueError`` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import os

import yaml


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from ``data``; nested dataclass fields recurse."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {where or 'config'}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        default = getattr(cls(), key)
        kwargs[key] = from_dict(type(default), value, f"{where}.{key}".lstrip(".")) if dataclasses.is_dataclass(default) else value
    return cls(**kwargs)


def load_yaml_with_overrides(path: str | None, overrides: list[str] | None = None) -> dict:
    """The YAML mapping at ``path`` (or ``{}``) with ``a.b=value`` overrides applied (values parsed as YAML)."""
    data: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ValueError(f"config file {path!r} does not exist")
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path!r} must hold a mapping, got {type(data).__name__}")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        dotted, value = item.split("=", 1)
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return data
