"""COCO / LVIS detection under the paper's protocol (:mod:`chatrex.bench.protocol`).

Per image: UPN proposals under the protocol; the image's ground-truth categories (or all) asked
in one ``"; "``-joined prompt or one prompt each; every returned index becomes a detection of
the category its grounded phrase names, scored by its proposal's UPN score. Boxes are pixel xyxy
inside, COCO xywh only in ``results.json``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..datasets.boxes import xywh_to_xyxy
from ..datasets.categories import coco_prompt_name, lvis_prompt_name
from ..datasets.coco import coco_candidates, load_coco_json
from ..datasets.files import first_existing
from ..datasets.lvis import lvis_candidates
from ..evaluation.metrics import ClassCounts, detection_precision_recall, proposal_recall
from .protocol import DetectionProtocol


@dataclass
class ImageTruth:
    """One image's ground truth, boxes pixel xyxy by original category id."""

    image_id: int
    path: str
    boxes: dict[int, list[list[float]]] = field(default_factory=dict)
    crowd: dict[int, list[list[float]]] = field(default_factory=dict)
    neg_category_ids: set[int] = field(default_factory=set)
    not_exhaustive_category_ids: set[int] = field(default_factory=set)


@dataclass
class GroundTruth:
    categories: dict[int, str]
    """Original id -> the name asked in prompts."""
    images: list[ImageTruth]


def load_ground_truth(ann_path: str, images_dir: str, dataset: str, limit: int | None = None) -> GroundTruth:
    """Read a COCO or LVIS annotation file. Images keep the file's order; ``limit`` keeps the
    first N. Crowd annotations are kept apart (they are COCO's ignore regions)."""
    try:  # the importers' reader: the same errors for a missing file, a folder, or not COCO
        data = load_coco_json(ann_path)
    except OSError as err:
        raise ValueError(str(err)) from None
    # The names the importers give prompts (chatrex data import), and the same image lookup.
    prompt_name = lvis_prompt_name if dataset == "lvis" else coco_prompt_name
    candidates = (lvis_candidates if dataset == "lvis" else coco_candidates)(images_dir)
    categories = {int(c["id"]): prompt_name(str(c["name"]).strip()) for c in data["categories"]}
    entries = data["images"][:limit] if limit is not None else data["images"]
    images = {}
    for e in entries:
        try:
            path = first_existing(candidates(e))[0]
        except ValueError as err:
            raise ValueError(f"{ann_path}: image {e.get('id')!r}: {err}") from None
        images[int(e["id"])] = ImageTruth(int(e["id"]), path, neg_category_ids=set(e.get("neg_category_ids", [])),
                                          not_exhaustive_category_ids=set(e.get("not_exhaustive_category_ids", [])))
    for a in data["annotations"]:
        truth = images.get(int(a["image_id"]))
        if truth is None:
            continue
        cid = int(a["category_id"])
        if cid not in categories:
            raise ValueError(f"{ann_path}: annotation {a.get('id')!r} has unknown category_id {cid}")
        try:
            box = xywh_to_xyxy(a.get("bbox"))
        except ValueError as err:
            raise ValueError(f"{ann_path}: annotation {a.get('id')!r}: {err}") from None
        (truth.crowd if a.get("iscrowd") else truth.boxes).setdefault(cid, []).append(box)
    return GroundTruth(categories, list(images.values()))


def _normalize(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())


def assign_groups(groups: list[tuple[str, list[int]]], asked: dict[int, str]) -> tuple[dict[int, list[int]], list[str]]:
    """Map an answer's grounded groups to the asked categories (id -> name).

    A group belongs to the category whose name its phrase is (case, spaces and underscores
    aside); with one category asked, every group is that category's; otherwise the longest
    asked name the phrase contains, or that contains the phrase. Returns ``({category id:
    indices in answer order}, phrases that matched no category)``.
    """
    by_name = {_normalize(n): cid for cid, n in asked.items()}
    out: dict[int, list[int]] = defaultdict(list)
    unmatched = []
    for phrase, indices in groups:
        p = _normalize(phrase)
        cid = by_name.get(p)
        if cid is None and len(asked) == 1:
            cid = next(iter(asked))
        if cid is None:
            hits = [(len(n), c) for n, c in by_name.items() if n and (n in p or (p and p in n))]
            cid = max(hits)[1] if hits else None
        if cid is None:
            unmatched.append(phrase)
            continue
        out[cid].extend(i for i in indices if i not in out[cid])
    return dict(out), unmatched


def questions(truth: ImageTruth, gt: GroundTruth, protocol: DetectionProtocol) -> list[dict[int, str]]:
    """The categories each question asks about, in category-id order (a fixed order, so a run
    is reproducible). gt-present: categories with a non-crowd box (a category present only as
    a crowd region has nothing to find)."""
    ids = sorted(truth.boxes) if protocol.categories == "gt-present" else sorted(gt.categories)
    if not ids:
        return []
    if protocol.prompt_mode == "per-category":
        return [{cid: gt.categories[cid]} for cid in ids]
    return [{cid: gt.categories[cid] for cid in ids}]


def run_image(answerer, truth: ImageTruth, gt: GroundTruth, protocol: DetectionProtocol, image, proposals=None) -> dict:
    """Ask every question of one image; the prediction line :func:`finalize` reads.
    ``proposals``: ``(boxes, scores)`` computed beforehand (a UPN batch), else computed here."""
    template = answerer.prompts.detection["category"]
    boxes, scores = answerer.proposals(image) if proposals is None else proposals
    dets, raw_answers, unmatched = [], [], []
    asked = questions(truth, gt, protocol)
    for cats in asked:
        text = template.format(phrase=protocol.separator.join(cats.values()))
        raw, groups = answerer.answer(image, boxes, text)
        raw_answers.append(raw)
        found, missed = assign_groups(groups, cats)
        unmatched += missed
        for cid, indices in found.items():
            for i in indices:
                if 0 <= i < len(boxes):
                    dets.append({"category_id": cid, "index": i, "box": [float(v) for v in boxes[i]], "score": float(scores[i])})
    all_gt = [b for bs in truth.boxes.values() for b in bs]
    found_gt, total_gt = proposal_recall(boxes, all_gt, k=protocol.proposals.max_proposals)
    return {"key": str(truth.image_id), "image_id": truth.image_id, "queries": len(asked), "proposals": len(boxes),
            "gt_found": found_gt, "gt_total": total_gt, "dets": dets, "answers": raw_answers, "unmatched_phrases": unmatched}


def coco_results(lines: list[dict]) -> list[dict]:
    """The official COCO results list: original ids, xywh boxes, UPN scores. Sorted by image,
    category, score (highest first) and proposal index, so that the file, and every tie COCOeval
    breaks by input order, is the same on every run."""
    rows = sorted(((ln["image_id"], d["category_id"], -d["score"], d["index"], d["box"]) for ln in lines for d in ln["dets"]),
                  key=lambda r: r[:4])
    return [{"image_id": i, "category_id": c, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": -s} for i, c, s, _, b in rows]


def precision_recall(lines: list[dict], gt: GroundTruth, iou_threshold: float, federated: bool = False) -> tuple[float, float, int]:
    """Class-averaged P/R at IoU ``iou_threshold`` (per class over all images, then the mean
    over classes; a class with no prediction has no precision and is left out of that mean).
    Crowd regions are ignored as COCOeval does; ``federated`` (LVIS) also ignores categories
    neither present nor in ``neg_category_ids``, and unmatched predictions of
    ``not_exhaustive_category_ids``, as LVISEval does."""
    by_image = {t.image_id: t for t in gt.images}
    counts: dict[int, ClassCounts] = defaultdict(ClassCounts)
    for ln in lines:
        truth = by_image[ln["image_id"]]
        preds = defaultdict(list)
        for d in sorted(ln["dets"], key=lambda d: (-d["score"], d["index"])):
            preds[d["category_id"]].append(d["box"])
        for cid in set(preds) | set(truth.boxes):
            # LVIS is federated: a category neither present nor verified absent says nothing.
            if federated and cid not in truth.boxes and cid not in truth.neg_category_ids:
                continue
            counts[cid].add(preds.get(cid, []), truth.boxes.get(cid, []), iou_threshold, ignore=truth.crowd.get(cid, []),
                            ignore_unmatched=cid in truth.not_exhaustive_category_ids)
    p, r = detection_precision_recall(counts)
    return p, r, len(counts)


def average_precision(ann_path: str, results: list[dict], image_ids: list[int], dataset: str) -> dict[str, float]:
    """COCO: pycocotools on the original annotation file (crowd regions ignored as COCO defines).
    LVIS: faster-coco-eval with LVIS rules (federated, 300 detections per image, APr/APc/APf)."""
    import contextlib
    import io

    keys = ("mAP", "AP50") if dataset == "coco" else ("mAP", "AP50", "APr", "APc", "APf")
    if not results:
        return {k: 0.0 for k in keys}
    with contextlib.redirect_stdout(io.StringIO()):  # both libraries print their progress
        if dataset == "coco":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO(ann_path)
            ev = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "bbox")
            ev.params.imgIds = sorted(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            return {"mAP": float(ev.stats[0]), "AP50": float(ev.stats[1])}
        from faster_coco_eval import COCO as FCOCO
        from faster_coco_eval import COCOeval_faster

        coco_gt = FCOCO(ann_path)
        ev = COCOeval_faster(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "bbox", lvis_style=True, print_function=lambda *a: None)
        ev.params.maxDets = [300]
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = ev.stats_as_dict
    return {"mAP": float(stats["AP_all"]), "AP50": float(stats["AP_50"]), "APr": float(stats["APr"]), "APc": float(stats["APc"]),
            "APf": float(stats["APf"])}


def finalize(lines: list[dict], gt: GroundTruth, protocol: DetectionProtocol) -> tuple[dict, list[dict]]:
    """``(metrics, results.json rows)`` from every image's prediction line."""
    results = coco_results(lines)
    precision, recall, classes = precision_recall(lines, gt, protocol.iou_threshold, federated=protocol.dataset == "lvis")
    found = sum(ln["gt_found"] for ln in lines)
    total = sum(ln["gt_total"] for ln in lines)
    metrics = average_precision(protocol.annotations, results, [ln["image_id"] for ln in lines], protocol.dataset)
    metrics |= {
        "precision@0.5": precision,
        "recall@0.5": recall,
        # At the protocol's max_proposals (100 by default); the name is fixed for other tools.
        "proposal_recall@100": found / total if total else 0.0,
        "images": len(lines),
        "queries": sum(ln["queries"] for ln in lines),
        "classes": classes,
        "detections": len(results),
        "unmatched_phrases": sum(len(ln["unmatched_phrases"]) for ln in lines),
    }
    return metrics, results

