"""Export Rexverse-style records (docs/records.md) to COCO detection JSON, one file per granularity.

UPN trains from COCO files marked coarse or fine (``python -m train.upn --coarse A --fine B``).
Categories are the records' region categories; images keep the records' relative paths.

    python -m data_engine.coco data/synth/train/records.jsonl --out-dir data/synth/train
    # -> data/synth/train/coco_coarse.json, data/synth/train/coco_fine.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from chatrex.utils.atomic import atomic_write
from chatrex.utils.jsonl import read_jsonl


def records_to_coco(records_path: str) -> dict[str, dict]:
    """Return ``{"coarse": coco_dict, "fine": coco_dict}``; regions without a granularity count
    as coarse. Boxes are converted from pixel xyxy to COCO pixel xywh."""
    out = {g: {"images": [], "annotations": [], "categories": []} for g in ("coarse", "fine")}
    cat_ids: dict[str, dict[str, int]] = {"coarse": {}, "fine": {}}
    for number, rec in enumerate(read_jsonl(records_path), 1):
        image_id = number
        for g in out:
            out[g]["images"].append({"id": image_id, "file_name": rec["image"], "width": rec["width"], "height": rec["height"]})
        for region in rec.get("regions", []):
            g = region.get("granularity") or "coarse"
            if g not in out:
                raise ValueError(f"{records_path}: record {number}: unknown granularity {g!r}")
            name = region.get("category") or "object"
            ids = cat_ids[g]
            if name not in ids:
                ids[name] = len(ids) + 1
                out[g]["categories"].append({"id": ids[name], "name": name})
            x1, y1, x2, y2 = region["box"]
            out[g]["annotations"].append({
                "id": len(out[g]["annotations"]) + 1, "image_id": image_id, "category_id": ids[name],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_engine.coco", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", help="records.jsonl")
    parser.add_argument("--out-dir", help="where coco_coarse.json and coco_fine.json go (default: next to the records)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.records):
        print(f"error: {args.records!r} does not exist", file=sys.stderr)
        return 2
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.records))
    os.makedirs(out_dir, exist_ok=True)
    for g, data in records_to_coco(args.records).items():
        path = os.path.join(out_dir, f"coco_{g}.json")
        with atomic_write(path) as f:
            json.dump(data, f)
        print(f"{path}: {len(data['images'])} images, {len(data['annotations'])} {g} boxes, {len(data['categories'])} categories")
    return 0


if __name__ == "__main__":
    sys.exit(main())
