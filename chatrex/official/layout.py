"""Recognising a folder in the released models' layout, without the conversion machinery.

``ChatRexPredictor.from_pretrained`` and :func:`chatrex.hub.resolve_model` ask this of every
folder they load, so it reads JSON only: :mod:`chatrex.convert.official` imports torch,
transformers' CLIP/LLM classes and the model, which a folder in our own layout never needs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

# The official ConvNeXt's keys (``(?:model\.)?``: the LLaVA-style nesting, see chatrex.convert.official).
CONVNEXT_KEY = re.compile(r"(?:model\.)?vision_tower_aux\.vision_(stem|stages)\.(.+)")


def read_config(path: str | os.PathLike) -> dict:
    """``config.json`` of ``path`` as a dict; ``{}`` when there is none."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from None


def is_official_folder(path: str | os.PathLike) -> bool:
    """True for a folder in the released models' layout: a config without ours
    (``vision_low_config``) that has the official ``mm_*`` fields, or whose weights index names
    the official ConvNeXt (``vision_tower_aux.``; ChatRex-7B's config is not public)."""
    config = read_config(path)
    if not config or "vision_low_config" in config:
        return False
    if any(k in config for k in ("mm_vision_tower", "mm_hidden_size", "mm_projector_type")):
        return True
    index = Path(path) / "model.safetensors.index.json"
    try:
        names = json.loads(index.read_text()).get("weight_map", {}) if index.is_file() else {}
    except json.JSONDecodeError:
        return False
    return any(CONVNEXT_KEY.fullmatch(k) for k in names)
