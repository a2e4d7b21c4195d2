"""Export records (docs/records.md) to the real benchmarks' own file formats, so that
``chatrex bench`` can be run end to end on synthetic images exactly as on COCO or RefCOCO.

* ``instances.json``: COCO instances (every region with a category, bbox pixel xywh), category
  ids in name order with gaps (10, 20, ...) so that code which assumes contiguous ids fails.
* ``refexp_mdetr.json``: MDETR's ``finetune_refcoco_*.json`` layout (one ``images`` entry per
  referring sentence, ``original_id`` = the COCO image id) from the records' referring queries
  that have exactly one target.

    python -m data_engine.export_formats data/synth/test/records.jsonl --out data/synth/test
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from chatrex.utils.atomic import atomic_write
from chatrex.utils.jsonl import read_jsonl

CATEGORY_ID_STEP = 10


def _xywh(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def export(records_path: str, limit: int | None = None) -> tuple[dict, dict]:
    """``(coco_instances, mdetr_refexp)`` for the first ``limit`` records. Image ids are the
    record's 1-based line number; ``file_name`` is the record's image path (relative paths stay
    relative to the records folder, which is then the ``--images`` folder)."""
    records = []
    for rec in read_jsonl(records_path):
        if limit is not None and len(records) >= limit:
            break
        records.append(rec)
    names = sorted({r["category"] for rec in records for r in rec.get("regions", []) if r.get("category")})
    cat_id = {n: (i + 1) * CATEGORY_ID_STEP for i, n in enumerate(names)}
    coco = {"images": [], "annotations": [], "categories": [{"id": cat_id[n], "name": n} for n in names]}
    mdetr = {"images": [], "annotations": [], "categories": coco["categories"]}
    for image_id, rec in enumerate(records, start=1):
        size = {"width": rec["width"], "height": rec["height"]}
        coco["images"].append({"id": image_id, "file_name": rec["image"], **size})
        ann_ids = {}
        for i, r in enumerate(rec.get("regions", [])):
            if not r.get("category"):
                continue
            bbox = _xywh(r["box"])
            ann_ids[i] = len(coco["annotations"]) + 1
            coco["annotations"].append({"id": ann_ids[i], "image_id": image_id, "category_id": cat_id[r["category"]], "bbox": bbox,
                                        "area": bbox[2] * bbox[3], "iscrowd": 0})
        for q in rec.get("queries", []):
            if q.get("type") != "referring" or len(q.get("targets", [])) != 1 or q["targets"][0] not in ann_ids:
                continue
            region = rec["regions"][q["targets"][0]]
            sentence_id = len(mdetr["images"])
            mdetr["images"].append({"id": sentence_id, "file_name": rec["image"], "original_id": image_id, "caption": q["text"],
                                    "dataset_name": "refcoco", **size})
            bbox = _xywh(region["box"])
            mdetr["annotations"].append({"id": sentence_id, "image_id": sentence_id, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
                                         "category_id": cat_id[region["category"]], "original_id": ann_ids[q["targets"][0]]})
    return coco, mdetr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_engine.export_formats", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", help="records.jsonl")
    parser.add_argument("--out", help="output folder (default: next to the records)")
    parser.add_argument("--limit", type=int, help="export the first N records only")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.records):
        print(f"error: {args.records!r} does not exist", file=sys.stderr)
        return 2
    out = args.out or os.path.dirname(os.path.abspath(args.records))
    os.makedirs(out, exist_ok=True)
    coco, mdetr = export(args.records, args.limit)
    for name, data in (("instances.json", coco), ("refexp_mdetr.json", mdetr)):
        with atomic_write(os.path.join(out, name)) as f:
            json.dump(data, f)
    print(f"{out}/instances.json: {len(coco['images'])} images, {len(coco['annotations'])} boxes, {len(coco['categories'])} categories")
    print(f"{out}/refexp_mdetr.json: {len(mdetr['images'])} sentences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
