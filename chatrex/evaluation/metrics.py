"""Metrics (docs/evaluation.md). Boxes are pixel xyxy throughout.

* Detection: precision and recall at IoU 0.5 per class, then averaged over classes (ChatRex's
  definition); mAP over IoU 0.50:0.95 from pycocotools.
* Referring: Acc@0.5; a query without a target is correct only if no box is returned.
* Proposals: recall@K at IoU 0.5.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou


def _t(boxes) -> torch.Tensor:
    return torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def greedy_match(pred, gt, iou_threshold: float = 0.5) -> int:
    """True positives of ``pred`` (in the given order, e.g. by score) against ``gt``: each
    prediction takes the unmatched ground-truth box it overlaps most, if IoU >= threshold."""
    pred, gt = _t(pred), _t(gt)
    if len(pred) == 0 or len(gt) == 0:
        return 0
    iou = box_iou(pred, gt)
    taken = torch.zeros(len(gt), dtype=torch.bool)
    tp = 0
    for row in iou:
        row = row.masked_fill(taken, -1.0)
        j = int(row.argmax())
        if float(row[j]) >= iou_threshold:
            taken[j] = True
            tp += 1
    return tp


def match_detections(pred, gt, ignore=(), iou_threshold: float = 0.5, ignore_unmatched: bool = False) -> tuple[int, int]:
    """``(true positives, false positives)`` of ``pred`` (in the given order, e.g. by score)
    against ``gt``, as :func:`greedy_match` matches them.

    ``ignore`` are COCO crowd regions: an unmatched prediction covered by one (intersection over
    the prediction's own area >= threshold, COCOeval's crowd rule) is neither a true nor a false
    positive. ``ignore_unmatched`` ignores every unmatched prediction (LVIS's not-exhaustively
    annotated categories)."""
    pred, gt, ignore = _t(pred), _t(gt), _t(ignore)
    if len(pred) == 0:
        return 0, 0
    taken = torch.zeros(len(gt), dtype=torch.bool)
    iou = box_iou(pred, gt) if len(gt) else torch.zeros(len(pred), 0, dtype=pred.dtype)
    if len(ignore):
        lt = torch.maximum(pred[:, None, :2], ignore[None, :, :2])
        rb = torch.minimum(pred[:, None, 2:], ignore[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=2)
        area = ((pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])).clamp(min=1e-12)
        covered = (inter / area[:, None]).max(dim=1).values >= iou_threshold
    else:
        covered = torch.zeros(len(pred), dtype=torch.bool)
    tp = fp = 0
    for i in range(len(pred)):
        if len(gt):
            row = iou[i].masked_fill(taken, -1.0)
            j = int(row.argmax())
            if float(row[j]) >= iou_threshold:
                taken[j] = True
                tp += 1
                continue
        if not (ignore_unmatched or bool(covered[i])):
            fp += 1
    return tp, fp


@dataclass
class ClassCounts:
    """Accumulated over images for one class."""

    tp: int = 0
    num_pred: int = 0
    num_gt: int = 0

    def add(self, pred, gt, iou_threshold: float = 0.5, ignore=(), ignore_unmatched: bool = False) -> None:
        """Count one image. Predictions that :func:`match_detections` ignores are not counted
        as predictions at all."""
        tp, fp = match_detections(pred, gt, ignore, iou_threshold, ignore_unmatched)
        self.tp += tp
        self.num_pred += tp + fp
        self.num_gt += len(_t(gt))


def detection_precision_recall(counts: dict[str, ClassCounts]) -> tuple[float, float]:
    """Class-averaged precision and recall. A class with no predictions has no precision and is
    left out of the precision average; a class with no ground truth is left out of recall."""
    precisions = [c.tp / c.num_pred for c in counts.values() if c.num_pred > 0]
    recalls = [c.tp / c.num_gt for c in counts.values() if c.num_gt > 0]
    return (float(np.mean(precisions)) if precisions else 0.0, float(np.mean(recalls)) if recalls else 0.0)


def coco_map(images: list[dict]) -> dict[str, float]:
    """mAP@[.50:.95] and AP50 with pycocotools.

    Args:
        images: one dict per image with ``gt`` ({class: (G, 4) boxes}) and ``pred``
            ({class: list of (box, score)}), boxes pixel xyxy.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    classes = sorted({c for im in images for c in list(im["gt"]) + list(im["pred"])})
    cat_id = {c: i + 1 for i, c in enumerate(classes)}
    gt = {"images": [], "annotations": [], "categories": [{"id": i, "name": c} for c, i in cat_id.items()]}
    dets = []
    for image_id, im in enumerate(images, start=1):
        gt["images"].append({"id": image_id, "width": im.get("width", 0), "height": im.get("height", 0)})
        for c, boxes in im["gt"].items():
            for b in np.asarray(boxes, dtype=float).reshape(-1, 4):
                w, h = b[2] - b[0], b[3] - b[1]
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": cat_id[c], "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
        for c, preds in im["pred"].items():
            for b, s in preds:
                dets.append({"image_id": image_id, "category_id": cat_id[c], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})
    if not gt["annotations"] or not dets:
        return {"mAP": 0.0, "AP50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP": float(ev.stats[0]), "AP50": float(ev.stats[1])}


def referring_correct(pred_boxes, target_boxes, iou_threshold: float = 0.5) -> bool:
    """Acc@0.5 for one query: with a target, the first predicted box must overlap one target by
    IoU >= threshold; without a target, the answer must name no box."""
    pred, target = _t(pred_boxes), _t(target_boxes)
    if len(target) == 0:
        return len(pred) == 0
    if len(pred) == 0:
        return False
    return bool(box_iou(pred[:1], target).max() >= iou_threshold)


def proposal_recall(proposals, gt, k: int = 100, iou_threshold: float = 0.5) -> tuple[int, int]:
    """``(found, total)``: ground-truth boxes overlapped by any of the first ``k`` proposals."""
    props, gt = _t(proposals)[:k], _t(gt)
    if len(gt) == 0:
        return 0, 0
    if len(props) == 0:
        return 0, len(gt)
    return int((box_iou(gt, props).max(dim=1).values >= iou_threshold).sum()), len(gt)
