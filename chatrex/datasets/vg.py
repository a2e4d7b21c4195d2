"""Visual Genome ``region_descriptions.json`` -> records.

The file is a list of ``{"id": <image_id>, "regions": [{"region_id", "image_id", "phrase", "x",
"y", "width", "height"}]}`` with integer pixel ``x, y, width, height``; records get pixel xyxy
``[x, y, x + width, y + height]`` and the ``phrase`` (stripped) on each region with its
``region_id``. Images are ``DIR/VG_100K/<id>.jpg`` or ``DIR/VG_100K_2/<id>.jpg``. The region file
has no image sizes: they come from ``image_data.json`` when given (which also gives the COCO
id of the images VG shares with COCO, kept as ``source.coco_id`` so evaluation images can be
held out), else from the image headers (a record whose image is missing and unlisted has no
size, and its boxes are then only checked for area). Both lists are streamed.
"""

from __future__ import annotations

import os

from .boxes import checked_box, xywh_to_xyxy
from .files import first_existing
from .jsonstream import iter_json_array
from .sink import BadRow, ImportSummary, RecordSink

IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")


def _region(r, width, height) -> dict:
    if not isinstance(r, dict):
        raise BadRow("malformed region", f"must be a dict, got {type(r).__name__}")
    phrase = r.get("phrase")
    if not isinstance(phrase, str) or not phrase.strip():
        raise BadRow("empty phrase", f"phrase must be a non-empty string, got {phrase!r}")
    box, _ = checked_box(xywh_to_xyxy([r.get("x"), r.get("y"), r.get("width"), r.get("height")]), width, height)
    region = {"box": box, "phrase": phrase.strip()}
    if r.get("region_id") is not None:
        region["region_id"] = r["region_id"]
    return region


def read_image_data(path: str) -> dict:
    """``image_data.json`` -> {image id: (width, height, coco_id or None)}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    out = {}
    for index, entry in iter_json_array(path):
        image_id = entry.get("image_id", entry.get("id")) if isinstance(entry, dict) else None
        w, h = (entry.get("width"), entry.get("height")) if isinstance(entry, dict) else (None, None)
        if not isinstance(image_id, (int, str)) or not all(isinstance(v, int) and v > 0 for v in (w, h)):
            raise ValueError(f"{path}: element {index}: expected {{'image_id', 'width', 'height'}}, got {str(entry)[:200]}")
        out[image_id] = (w, h, entry.get("coco_id"))
    return out


def import_vg(regions_json: str, images: str, out: str, *, image_data: str | None = None, strict: bool = False,
              progress: bool = True) -> ImportSummary:
    """VG region descriptions ``regions_json`` with images under ``images`` (and sizes from
    ``image_data``, VG's ``image_data.json``, when given) -> records in ``out``."""
    if not os.path.isfile(regions_json):
        raise FileNotFoundError(f"{regions_json}: no such file")
    if not os.path.isdir(images):
        raise FileNotFoundError(f"{images}: no such image folder")
    images = os.path.abspath(images)
    sizes = read_image_data(image_data) if image_data else {}
    with RecordSink(out, "vg", strict=strict, progress=progress, unit="img") as sink:
        for index, entry in iter_json_array(regions_json):
            sink.tick()
            where = f"{regions_json}: element {index}"
            image_id = entry.get("id", entry.get("image_id")) if isinstance(entry, dict) else None
            if not isinstance(image_id, (int, str)) or not isinstance(entry.get("regions"), list):
                sink.bad(where, f"expected {{'id': <image id>, 'regions': [...]}}, got {str(entry)[:200]}", "malformed entry")
                continue
            where += f" (image {image_id!r})"
            path, exists = first_existing([os.path.join(images, d, f"{image_id}.jpg") for d in IMAGE_FOLDERS])
            width, height, coco_id = sizes.get(image_id, (None, None, None))
            size = sink.image_size(path, exists, width, height, where)
            if size is None:
                continue
            width, height = size
            regions = []
            for j, r in enumerate(entry["regions"]):
                try:
                    regions.append(_region(r, width, height))
                except BadRow as err:  # BadBox included
                    rid = r.get("region_id") if isinstance(r, dict) else None
                    sink.bad(f"{where} regions[{j}] (region_id {rid!r})", str(err), err.kind)
            record = {"id": f"vg/{image_id}", "image": path}
            if width is not None:
                record.update(width=width, height=height)
            record["regions"] = regions
            record["source"] = {"dataset": "vg", "image_id": image_id, "file_name": os.path.relpath(path, images)}
            if coco_id is not None:
                record["source"]["coco_id"] = coco_id
            sink.write(record, where)
        return sink.finish()
