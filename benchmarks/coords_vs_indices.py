"""The paper's central claim in miniature: retrieving box indices vs writing coordinates.

    .venv/bin/python benchmarks/coords_vs_indices.py --indices runs/cmp/indices/final \\
        --coordinates runs/cmp/coordinates/final --data data/synth/test --limit 200 --json-out runs/cmp/result.json

Both models must come from the same recipe (same LLM, encoders, data and steps; the
coordinate one trained with ``data.answer_format: coordinates``). The index model answers
from UPN proposals; the coordinate model sees no box tokens and writes
``(x1,y1),(x2,y2)`` in 1000 bins. Reported per number of whole objects in the image
(1-3, 4-7, 8+): category detection precision/recall at IoU 0.5 (class-averaged) and
referring Acc@0.5 (negatives included).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np
from report import emit  # benchmarks/report.py, next to this script
from tqdm.auto import tqdm

from chatrex import ChatRexPredictor
from chatrex.evaluation.metrics import ClassCounts, detection_precision_recall, referring_correct
from chatrex.evaluation.runner import _image, _records, _sample
from chatrex.text import prompts
from chatrex.text.coordinates import parse_coordinate_answer

BUCKETS = ((1, 3, "1-3"), (4, 7, "4-7"), (8, 10**9, "8+"))


def bucket(record: dict) -> str:
    n = sum(r.get("granularity") == "coarse" for r in record.get("regions", []))
    return next(name for lo, hi, name in BUCKETS if lo <= n <= hi) if n else "0"


class IndexLocator:
    def __init__(self, model: str, upn: str | None):
        self.p = ChatRexPredictor.from_pretrained(model, upn=upn)

    def set_image(self, image) -> None:
        self.p.set_image(image)

    def locate(self, phrase: str, kind: str) -> list[list[float]]:
        return self.p.detect(phrase, kind=kind).boxes


class CoordinateLocator:
    """A model trained to write coordinates: no proposals, no box tokens in the prompt."""

    def __init__(self, model: str):
        self.p = ChatRexPredictor.from_pretrained(model)  # a upn/ folder, if any, is never used
        self.size = (1, 1)

    def set_image(self, image) -> None:
        self.size = image.size
        self.p.set_image(image, boxes=np.zeros((0, 4)))

    def locate(self, phrase: str, kind: str) -> list[list[float]]:
        raw = self.p.ask(prompts.DETECTION[kind][0].format(phrase=phrase)).raw
        spans = parse_coordinate_answer(raw, *self.size)
        return spans[0][1] if spans else []


def evaluate(locator, records, per_image: int | None) -> dict:
    det: dict[str, dict[str, ClassCounts]] = defaultdict(lambda: defaultdict(ClassCounts))
    ref: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rec in tqdm(records, desc=type(locator).__name__):
        b = bucket(rec)
        locator.set_image(_image(rec["image"]))
        gt = defaultdict(list)
        for r in rec.get("regions", []):
            gt[r["category"]].append(r["box"])
        for category in _sample(sorted(gt), per_image, rec["image"]):
            boxes = locator.locate(category, "category")
            det[b][category].add(boxes, gt[category])
            det["all"][category].add(boxes, gt[category])
        for q in _sample([q for q in rec.get("queries", []) if q.get("type") == "referring"], per_image, rec["image"]):
            ok = referring_correct(locator.locate(q["text"], "referring"), [rec["regions"][t]["box"] for t in q.get("targets", [])])
            for key in (b, "all"):
                ref[key][0] += ok
                ref[key][1] += 1
    out = {}
    for key in ["1-3", "4-7", "8+", "all"]:
        if key not in det and key not in ref:
            continue
        p, r = detection_precision_recall(det[key]) if key in det else (0.0, 0.0)
        out[key] = {"precision@0.5": round(p, 4), "recall@0.5": round(r, 4),
                    "referring_acc@0.5": round(ref[key][0] / ref[key][1], 4) if ref[key][1] else 0.0, "referring_queries": ref[key][1]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--indices", required=True, help="ChatRex (index answers) folder or bundled name")
    ap.add_argument("--coordinates", required=True, help="coordinate-answer model folder")
    ap.add_argument("--upn", help="UPN for the index model (default: its upn/ folder)")
    ap.add_argument("--data", default="data/synth/test")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--per-image", type=int, default=3)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    records = _records(args.data, args.limit)
    result = {
        "indices": evaluate(IndexLocator(args.indices, args.upn), records, args.per_image),
        "coordinates": evaluate(CoordinateLocator(args.coordinates), records, args.per_image),
    }
    emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
