"""Rexverse-2M (image TSV + annotation TSV, each with a ``.lineidx``) -> records.

Annotation line ``n`` of the annotation ``.lineidx`` becomes record ``rexverse/<n>`` (the
``n`` of the official loader's ``dataset[n]``). Its image is the image TSV line at the stored
byte offset, decoded once to ``IMAGE_DIR/<image line number>.jpg`` (the raw stored bytes, not
re-encoded; skipped when the file exists, so the one-sentence and referring annotation files
share one image folder and re-runs decode nothing). Lines are read by seeking: the 110 GB
image TSV is never read as a whole.

The annotation JSON schema is detected on the first non-empty line (the release's keys are
not documented). Recognised: ``{"boxes": [{"bbox": [x0, y0, x1, y1], "phrase": "..."}]}``, the
same with the list under ``regions``/``objects``/``annotations``/``instances``, or the list
itself; a region's box under ``bbox``/``box``/``xyxy`` (one box, or a list of boxes sharing
the text) and its text under one of ``TEXT_KEYS``. Boxes are taken as pixel xyxy
(``box_format="xywh"`` for ``[x, y, w, h]``). The text goes to the region field of
``TEXT_KEYS[key]`` (``--text-field`` overrides; a ``phrase`` in a file named ``*referring*``
is a referring expression). Phrases and referring expressions also get a query whose
targets are the boxes of that entry. Anything else is refused, naming the keys found.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .boxes import BadBox, as_xyxy, checked_box, xywh_to_xyxy
from .files import image_size, write_once
from .sink import BadRow, ImportSummary, RecordSink, sidecar_path
from .tsv import ImageTsv, annotation_lines, read_lineidx

CONTAINER_KEYS = ("boxes", "regions", "objects", "annotations", "instances")
BOX_KEYS = ("bbox", "box", "xyxy")
TEXT_KEYS = {"phrase": "phrase", "referring": "referring", "referring_expression": "referring", "sent": "referring",
             "caption": "description", "description": "description", "one_sentence": "description", "text": "description",
             "category": "category", "label": "category", "name": "category"}
TEXT_FIELDS = ("phrase", "referring", "description", "category")
EXPECTED = ('{"boxes": [{"bbox": [x0, y0, x1, y1], "phrase": "..."}]} or a list of regions with '
            f"{'/'.join(BOX_KEYS)} and one of {'/'.join(TEXT_KEYS)}")


@dataclass
class RegionSchema:
    container: str | None  # key holding the region list; None: the JSON is the list
    box_key: str
    text_key: str
    field: str  # region field the text goes to

    def entries(self, obj) -> list:
        items = obj if self.container is None else (obj.get(self.container) if isinstance(obj, dict) else None)
        if not isinstance(items, list):
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise BadRow("schema mismatch", f"expected the region list {'at ' + repr(self.container) if self.container else ''}, found {got}")
        return items


def _keys(obj) -> str:
    if isinstance(obj, dict):
        return f"keys {sorted(obj)}"
    return f"a {type(obj).__name__}"


def detect_schema(obj, where: str, text_field: str | None = None, file_hint: str = "") -> RegionSchema | None:
    """The schema of one annotation JSON, None when its region list is empty (look further);
    ``ValueError`` naming ``where`` and the keys found when it is not recognised."""
    container = None
    if isinstance(obj, dict):
        container = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), list)), None)
        items = obj.get(container) if container else None
    else:
        items = obj if isinstance(obj, list) else None
    if items is None:
        raise ValueError(f"{where}: unknown Rexverse annotation schema: found {_keys(obj)}; expected {EXPECTED}")
    if not items:
        return None
    first = items[0]
    box_key = next((k for k in BOX_KEYS if isinstance(first, dict) and k in first), None)
    text_key = next((k for k in TEXT_KEYS if isinstance(first, dict) and k in first), None)
    if box_key is None or text_key is None:
        inside = f"{container!r} entries" if container else "list entries"
        raise ValueError(f"{where}: unknown Rexverse annotation schema: {inside} have {_keys(first)}; expected {EXPECTED}")
    field = text_field or TEXT_KEYS[text_key]
    if text_field is None and field == "phrase" and "referring" in file_hint.lower():
        field = "referring"
    return RegionSchema(container, box_key, text_key, field)


def _boxes(value, box_format: str) -> list[list[float]]:
    convert = xywh_to_xyxy if box_format == "xywh" else as_xyxy
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        return [convert(v) for v in value]
    return [convert(value)]


def build_regions(obj, schema: RegionSchema, box_format: str, width: int, height: int) -> tuple[list, list]:
    """Regions (pixel xyxy) and queries of one annotation. Raises BadRow/BadBox."""
    regions, queries = [], []
    for j, entry in enumerate(schema.entries(obj)):
        if not isinstance(entry, dict) or schema.box_key not in entry or schema.text_key not in entry:
            raise BadRow("schema mismatch", f"entry {j} lacks {schema.box_key!r}/{schema.text_key!r}: found {_keys(entry)}")
        text = entry[schema.text_key]
        if not isinstance(text, str) or not text.strip():
            raise BadRow("empty text", f"entry {j}: {schema.text_key} must be a non-empty string, got {text!r}")
        targets = []
        for box in _boxes(entry[schema.box_key], box_format):
            try:
                box, _ = checked_box(box, width, height)
            except BadBox as err:
                raise BadBox(err.kind, f"entry {j}: {err}") from None
            targets.append(len(regions))
            regions.append({"box": box, schema.field: text})
        if schema.field in ("phrase", "referring"):
            queries.append({"type": schema.field, "text": text, "targets": targets})
    return regions, queries


def import_rexverse(images_tsv: str, ann_tsv: str, out: str, *, image_dir: str | None = None,
                    box_format: str = "xyxy", text_field: str | None = None, strict: bool = False,
                    progress: bool = True) -> ImportSummary:
    """Rexverse ``ann_tsv`` (+ ``.lineidx``) over ``images_tsv`` (+ ``.lineidx``) -> records in
    ``out``; images decoded to ``image_dir`` (default: ``OUT`` without ``.jsonl`` + ``.images/``)."""
    if box_format not in ("xyxy", "xywh"):
        raise ValueError(f"box_format must be xyxy or xywh, got {box_format!r}")
    if text_field is not None and text_field not in TEXT_FIELDS:
        raise ValueError(f"text_field must be one of {TEXT_FIELDS}, got {text_field!r}")
    for path in (images_tsv, ann_tsv):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
    ann_idx = read_lineidx(f"{ann_tsv}.lineidx")
    img_idx = read_lineidx(f"{images_tsv}.lineidx")
    image_dir = os.path.abspath(image_dir or sidecar_path(out, "images"))
    os.makedirs(image_dir, exist_ok=True)
    schema = None  # detected on the first line with regions
    tsv = ImageTsv(images_tsv, img_idx)
    try:
        with RecordSink(out, "rexverse", strict=strict, progress=progress, total=len(ann_idx), unit="img") as sink:
            for index, offset, text in annotation_lines(ann_tsv, ann_idx):
                sink.tick()
                where = f"{ann_tsv}: annotation line {index}"
                try:
                    if offset is None:
                        raise BadRow("malformed line", text)
                    try:
                        obj = json.loads(text)
                    except json.JSONDecodeError as err:
                        raise BadRow("malformed line", f"not valid JSON ({err})") from None
                    if schema is None:  # an unknown schema is a ValueError: the whole file is unreadable
                        schema = detect_schema(obj, where, text_field, os.path.basename(ann_tsv))
                    image, width, height, written = _image(tsv, offset, image_dir)
                    regions, queries = build_regions(obj, schema, box_format, width, height) if schema else ([], [])
                except BadRow as err:
                    sink.bad(where, str(err), err.kind)
                    continue
                if written:
                    sink.note("images decoded")
                record = {"id": f"rexverse/{index}", "image": image, "width": width, "height": height, "regions": regions}
                if queries:
                    record["queries"] = queries
                record["source"] = {"dataset": "rexverse", "image_id": tsv.key(offset), "image_line": tsv.line_number(offset),
                                    "image_offset": offset, "annotation_line": index}
                sink.write(record, where, sentences=len(queries))
            return sink.finish()
    finally:
        tsv.close()


def _image(tsv: ImageTsv, offset: int, image_dir: str) -> tuple[str, int, int, bool]:
    """``(path, width, height, written)`` of the image at ``offset``, decoded unless present."""
    line = tsv.line_number(offset)
    path = os.path.join(image_dir, f"{line}.jpg")
    if os.path.exists(path):
        data, written = path, False
    else:
        data, written = tsv.image_bytes(offset), True
    try:
        width, height = image_size(data)
    except ValueError as err:
        raise BadRow("bad image data", f"{tsv.path}: image line {line}: {err}") from None
    if written:
        write_once(path, data)
    return path, width, height, written
