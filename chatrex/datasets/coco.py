"""COCO instances JSON (and Objects365, same schema) -> records.

Boxes: the source's ``bbox`` is ``[x, y, w, h]`` in pixels; records get pixel xyxy. One record
per entry of ``images`` in file order (images without annotations are kept, with
``"regions": []``), regions in annotation order. Crowd annotations are kept and marked
``"iscrowd": true`` (they are ignore regions for COCOeval); category ids keep their gaps.

Objects365 (``zhiyuan_objv2_*.json``) is recognised by the annotation file's name (it
contains ``objects365`` or ``zhiyuan_objv``) or forced with ``objects365=True``
(``--objects365``). Its ``file_name`` is nested (``images/v1/patch8/x.jpg``): the image is
looked for at ``DIR/patch8/x.jpg`` first (the layout of the released archives), then at
``DIR/images/v1/patch8/x.jpg``. Names are cleaned for prompts (see ``categories``).

The annotation file is read whole with ``json.load`` (COCO train2017 needs about 2 GB of
memory, Objects365 train far more); the records are written as they are built.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from .boxes import BadBox, checked_box, xywh_to_xyxy
from .categories import categories_sidecar, coco_prompt_name, objects365_prompt_name
from .files import ImageLocator
from .sink import ImportSummary, RecordSink


def load_json_file(path: str) -> object:
    """``json.load`` with errors that name the file (ValueError) or say it is missing."""
    if os.path.isdir(path):
        raise FileNotFoundError(f"{path} is a folder; give the JSON file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def load_coco_json(path: str) -> dict:
    """A COCO-style dict with ``images`` (list), ``annotations`` and ``categories`` (lists,
    possibly empty)."""
    data = load_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: not a COCO-style annotation file (needs an 'images' list; found {keys})")
    for key in ("annotations", "categories"):
        if not isinstance(data.setdefault(key, []), list):
            raise ValueError(f"{path}: '{key}' must be a list")
    return data


def _looks_like_lvis(data: dict) -> bool:
    cats, imgs = data.get("categories") or [], data.get("images") or []
    return bool(cats) and all(isinstance(c, dict) and "frequency" in c for c in cats[:10]) or (
        bool(imgs) and all(isinstance(i, dict) and "coco_url" in i and "file_name" not in i for i in imgs[:10]))


def is_objects365(ann_path: str) -> bool:
    name = os.path.basename(ann_path).lower()
    return "objects365" in name or "zhiyuan_objv" in name


def _id(v):
    """``v`` when it can be an id (int or str; lists and dicts are unhashable), else None."""
    return v if isinstance(v, (int, str)) and not isinstance(v, bool) else None


def _positive_int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


@dataclass
class CocoStyle:
    """What differs between COCO, Objects365 and LVIS on the common path."""

    dataset: str
    prompt_name: Callable[[str], str]
    # image entry -> candidate paths (first existing wins); raises ValueError if it names no file
    candidates: Callable[[dict], list[str]]
    source_fields: Callable[[dict], dict] = field(default=lambda img: {})
    crowd: bool = True


def coco_candidates(images: str) -> Callable[[dict], list[str]]:
    def candidates(img: dict) -> list[str]:
        name = img.get("file_name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"no file_name (got {name!r})")
        return [os.path.join(images, name)]
    return candidates


def objects365_candidates(images: str) -> Callable[[dict], list[str]]:
    def candidates(img: dict) -> list[str]:
        name = img.get("file_name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"no file_name (got {name!r})")
        parts = name.replace("\\", "/").split("/")
        patch = next((i for i, p in enumerate(parts) if p.startswith("patch")), None)
        short = "/".join(parts[patch:]) if patch is not None else parts[-1]
        return [os.path.join(images, short), os.path.join(images, name)]
    return candidates


def _index_annotations(data: dict, ann_path: str, image_ids: set, cats: dict, sink: RecordSink) -> dict:
    """image id -> [annotation]; annotations that name no known image or category are bad rows.
    (pycocotools' index would raise KeyError on the first malformed one instead.)"""
    by_image = defaultdict(list)
    for j, ann in enumerate(data["annotations"]):
        where = f"{ann_path}: annotations[{j}]"
        if not isinstance(ann, dict):
            sink.bad(where, f"must be a dict, got {type(ann).__name__}", "malformed annotation")
            continue
        where += f" (id {ann.get('id')!r})"
        if "id" not in ann:
            sink.bad(where, "annotation without 'id'", "malformed annotation")
        elif _id(ann.get("image_id")) not in image_ids:
            sink.bad(where, f"image_id {ann.get('image_id')!r} is not in images", "unknown image_id")
        elif _id(ann.get("category_id")) not in cats:
            sink.bad(where, f"category_id {ann.get('category_id')!r} is not in categories", "unknown category_id")
        else:
            by_image[ann["image_id"]].append((where, ann))
    return by_image


def import_coco_like(ann_path: str, data: dict, style: CocoStyle, out: str, *, strict: bool = False,
                     progress: bool = True) -> ImportSummary:
    """Write one record per image of a COCO-style ``data`` (already loaded from ``ann_path``)."""
    cats = {c["id"]: c for c in data["categories"]
            if isinstance(c, dict) and _id(c.get("id")) is not None and isinstance(c.get("name"), str)}
    locate = ImageLocator()
    ann_abs = os.path.abspath(ann_path)
    with RecordSink(out, style.dataset, strict=strict, progress=progress, total=len(data["images"]), unit="img") as sink:
        image_ids = {_id(img.get("id")) for img in data["images"] if isinstance(img, dict)} - {None}
        by_image = _index_annotations(data, ann_path, image_ids, cats, sink)
        seen = set()
        for i, img in enumerate(data["images"]):
            sink.tick()
            where = f"{ann_path}: images[{i}]"
            if not isinstance(img, dict) or _id(img.get("id")) is None:
                sink.bad(where, f"image entry without an int or string 'id': {str(img)[:200]}", "malformed image")
                continue
            image_id = img["id"]
            where += f" (id {image_id!r})"
            if image_id in seen:
                sink.bad(where, f"duplicate image id {image_id!r}", "duplicate image id")
                continue
            seen.add(image_id)
            try:
                path, exists = locate(style.candidates(img))
            except ValueError as err:
                sink.bad(where, str(err), "malformed image")
                continue
            size = sink.image_size(path, exists, _positive_int(img.get("width")), _positive_int(img.get("height")), where)
            if size is None:
                continue
            width, height = size
            regions = []
            for ann_where, ann in by_image.get(image_id, ()):
                try:
                    box, clipped = checked_box(xywh_to_xyxy(ann.get("bbox")), width, height)
                except BadBox as err:
                    sink.bad(ann_where, str(err), err.kind)
                    continue
                if clipped:
                    sink.note("boxes clipped by <= 1 px")
                cat = cats[ann["category_id"]]
                region = {"box": box, "category": style.prompt_name(cat["name"]),
                          "category_id": ann["category_id"], "annotation_id": ann["id"]}
                if style.crowd and ann.get("iscrowd"):
                    region["iscrowd"] = True
                regions.append(region)
            record = {"id": f"{style.dataset}/{image_id}", "image": path}
            if width is not None and height is not None:
                record.update(width=width, height=height)
            record["regions"] = regions
            record["source"] = {"dataset": style.dataset, "image_id": image_id,
                                "file_name": img.get("file_name") or os.path.basename(path),
                                "annotation_file": ann_abs, **style.source_fields(img)}
            sink.write(record, where)
        sink.sidecar("categories.json", categories_sidecar(data["categories"], style.prompt_name))
        return sink.finish()


def import_coco(ann: str, images: str, out: str, *, objects365: bool | None = None, strict: bool = False,
                progress: bool = True) -> ImportSummary:
    """COCO (or Objects365 when ``objects365`` is True, or None and the file name says so)
    instances JSON ``ann`` with images under ``images`` -> records in ``out``, categories in
    ``sidecar_path(out, "categories.json")``."""
    if not os.path.isdir(images):
        raise FileNotFoundError(f"{images}: no such image folder")
    data = load_coco_json(ann)
    if _looks_like_lvis(data):
        raise ValueError(f"{ann}: an LVIS file (categories with 'frequency', images with coco_url only); "
                         f"use chatrex data import lvis")
    if objects365 is None:
        objects365 = is_objects365(ann)
    images = os.path.abspath(images)
    if objects365:
        style = CocoStyle("objects365", objects365_prompt_name, objects365_candidates(images))
    else:
        style = CocoStyle("coco", coco_prompt_name, coco_candidates(images))
    return import_coco_like(ann, data, style, out, strict=strict, progress=progress)
