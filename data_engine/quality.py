"""Score an engine run against ground truth (the synthetic world's records).

    python -m data_engine.quality runs/engine --truth data/synth/engine_eval/records.jsonl

Per image (engine records are matched to truth records by image path; an image the engine
rejected or failed contributes no regions):

- **grounding precision**: produced regions matched one-to-one (greedy by IoU, IoU >= 0.5) to
  a truth region of any granularity, over all produced regions;
- **grounding recall**: truth whole objects (coarse regions) matched, over all of them;
- **category accuracy**: matched produced regions whose category equals the truth's;
- **referring unique & correct**: produced referring expressions that, resolved against the
  truth scene by :mod:`data_engine.synthetic.expressions`, denote exactly the matched truth
  region; over all produced expressions (unmatched regions and unparseable text count as wrong).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torchvision.ops import box_iou

from chatrex.utils.jsonl import read_jsonl

from .runners.output import list_shards, manifest_path
from .synthetic.expressions import Unparseable, resolve


def match_regions(produced: list[dict], truth: list[dict], iou_threshold: float = 0.5) -> dict[int, int]:
    """Greedy one-to-one matching by descending IoU: ``{produced index: truth index}``."""
    if not produced or not truth:
        return {}
    iou = box_iou(torch.tensor([r["box"] for r in produced], dtype=torch.float32), torch.tensor([r["box"] for r in truth], dtype=torch.float32))
    pairs = sorted(((float(iou[i, j]), i, j) for i in range(len(produced)) for j in range(len(truth)) if iou[i, j] >= iou_threshold), reverse=True)
    out: dict[int, int] = {}
    used: set[int] = set()
    for _, i, j in pairs:
        if i not in out and j not in used:
            out[i] = j
            used.add(j)
    return out


def score(output: str, truth_path: str) -> dict:
    root = os.path.dirname(os.path.abspath(truth_path))
    truth = {}
    for rec in read_jsonl(truth_path):
        truth[os.path.normpath(os.path.join(root, rec["image"]))] = rec
    produced = {}
    for shard in list_shards(output):
        for rec in read_jsonl(shard):
            produced[os.path.normpath(rec["image"])] = rec
    statuses = {os.path.normpath(r["path"]): r.get("status") for r in read_jsonl(manifest_path(output), missing_ok=True) if r.get("path")}
    images = [p for p in truth if p in produced or p in statuses]
    n = {"produced": 0, "matched": 0, "truth_coarse": 0, "coarse_found": 0, "category_ok": 0, "referring": 0, "referring_ok": 0}
    for path in images:
        t = truth[path]
        regions = produced.get(path, {}).get("regions", [])
        matches = match_regions(regions, t["regions"])
        n["produced"] += len(regions)
        n["matched"] += len(matches)
        coarse = [j for j, r in enumerate(t["regions"]) if r.get("granularity") == "coarse"]
        n["truth_coarse"] += len(coarse)
        n["coarse_found"] += len(set(matches.values()) & set(coarse))
        n["category_ok"] += sum(regions[i].get("category") == t["regions"][j]["category"] for i, j in matches.items())
        for i, r in enumerate(regions):
            if r.get("referring"):
                n["referring"] += 1
                try:
                    n["referring_ok"] += i in matches and resolve(r["referring"], t) == [matches[i]]
                except Unparseable:
                    pass

    def ratio(a, b):
        return round(n[a] / n[b], 4) if n[b] else 0.0

    return {
        "images": len(images),
        "images_with_records": sum(p in produced for p in images),
        "grounding_precision": ratio("matched", "produced"),
        "grounding_recall_coarse": ratio("coarse_found", "truth_coarse"),
        "category_accuracy": ratio("category_ok", "matched"),
        "referring_unique_correct": ratio("referring_ok", "referring"),
        "regions_with_referring": round(n["referring"] / n["produced"], 4) if n["produced"] else 0.0,
        "counts": n,
    }


def format_table(result: dict) -> str:
    rows = [("images scored", result["images"]), ("images with a record", result["images_with_records"]),
            ("grounding precision @0.5", result["grounding_precision"]), ("grounding recall @0.5 (whole objects)", result["grounding_recall_coarse"]),
            ("region category accuracy", result["category_accuracy"]), ("referring expressions unique & correct", result["referring_unique_correct"]),
            ("regions with a referring expression", result["regions_with_referring"])]
    return "\n".join(f"{name:<42}{value:>10}" for name, value in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_engine.quality", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="engine output folder")
    p.add_argument("--truth", required=True, help="ground-truth records.jsonl of the same images")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for path, what in ((args.output, "output folder"), (args.truth, "truth file")):
        if not os.path.exists(path):
            print(f"error: {what} {path!r} does not exist", file=sys.stderr)
            return 2
    result = score(args.output, args.truth)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
