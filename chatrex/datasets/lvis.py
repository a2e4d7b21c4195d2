"""LVIS v1 (COCO schema plus federated-evaluation fields) -> records.

Boxes: ``bbox`` ``[x, y, w, h]`` pixels -> pixel xyxy. Differences from COCO kept:

* the image path comes from ``file_name`` when present (and that file exists), else from
  ``coco_url`` (``http://images.cocodataset.org/val2017/000000000009.jpg`` ->
  ``DIR/val2017/…jpg`` or ``DIR/…jpg``, whichever exists; the first candidate, ``DIR/file_name``
  or ``DIR/val2017/…jpg``, when none does);
* ``neg_category_ids`` and ``not_exhaustive_category_ids`` go to the record's ``source``
  (LVISEval needs them per image); ``coco_url`` too;
* the categories sidecar keeps every category field (``frequency``, ``synonyms``, ``synset``,
  ``def``, counts); regions carry the prompt name (``bow_(weapon)`` -> ``bow (weapon)``).

LVIS has no crowd annotations, so regions never carry ``iscrowd``.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from .categories import lvis_prompt_name
from .coco import CocoStyle, import_coco_like, load_coco_json
from .sink import ImportSummary


def lvis_candidates(images: str):
    def candidates(img: dict) -> list[str]:
        name, url = img.get("file_name"), img.get("coco_url")
        out = [os.path.join(images, name)] if isinstance(name, str) and name else []
        if isinstance(url, str) and url:
            parts = urlparse(url).path.rstrip("/").split("/")
            split = parts[-2] if len(parts) >= 2 else ""
            out += ([os.path.join(images, split, parts[-1])] if split else []) + [os.path.join(images, parts[-1])]
        if not out:
            raise ValueError("neither file_name nor coco_url")
        return out
    return candidates


def lvis_source_fields(img: dict) -> dict:
    out = {"neg_category_ids": list(img.get("neg_category_ids") or []),
           "not_exhaustive_category_ids": list(img.get("not_exhaustive_category_ids") or [])}
    url = img.get("coco_url")
    if isinstance(url, str) and url:
        out["coco_url"] = url
        if not img.get("file_name"):  # v1 files have none: the split/basename the URL names
            out["file_name"] = "/".join(urlparse(url).path.rstrip("/").split("/")[-2:]).lstrip("/")
    return out


def import_lvis(ann: str, images: str, out: str, *, strict: bool = False, progress: bool = True) -> ImportSummary:
    """LVIS annotation JSON ``ann`` with COCO images under ``images`` (holding ``val2017/`` and
    ``train2017/``, or the images themselves) -> records in ``out``, categories in
    ``sidecar_path(out, "categories.json")``."""
    if not os.path.isdir(images):
        raise FileNotFoundError(f"{images}: no such image folder")
    data = load_coco_json(ann)
    style = CocoStyle("lvis", lvis_prompt_name, lvis_candidates(os.path.abspath(images)),
                      source_fields=lvis_source_fields, crowd=False)
    return import_coco_like(ann, data, style, out, strict=strict, progress=progress)
