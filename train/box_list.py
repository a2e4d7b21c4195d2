"""The box list of one training sample: ground truth mixed with proposals (docs/architecture.md).

At inference the model sees only proposals, so training mixes ground-truth boxes with
proposals, removes proposals that duplicate a ground-truth box, shuffles and caps the list.
Answer indices then refer to positions in this list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou, clip_boxes_to_image

from chatrex.utils.boxes import check_boxes


@dataclass
class BoxList:
    """Attributes:
        boxes: (K, 4) pixel xyxy, K <= max_boxes.
        gt_to_index: for each ground-truth box, its position in ``boxes`` (None if capped away).
    """

    boxes: np.ndarray
    gt_to_index: list[int | None]


def build_box_list(gt_boxes, proposals, rng: np.random.Generator, max_boxes: int = 100, dedup_iou: float = 0.7, num_proposals: int | None = None) -> BoxList:
    """Mix ground truth (G, 4) with proposals (P, 4), both pixel xyxy.

    Proposals whose IoU with any ground-truth box exceeds ``dedup_iou`` are dropped (the
    ground-truth box stands for them); so are proposals overlapping an already kept proposal by
    more than ``dedup_iou``. ``num_proposals`` caps how many proposals are drawn (default:
    fill up to ``max_boxes``). Ground truth is never capped away in favour of proposals; if
    there are more than ``max_boxes`` ground-truth boxes, a random subset is kept.
    """
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    props = np.asarray(proposals if proposals is not None else np.zeros((0, 4)), dtype=np.float64).reshape(-1, 4)
    keep_gt = np.arange(len(gt))
    if len(gt) > max_boxes:
        keep_gt = np.sort(rng.choice(len(gt), size=max_boxes, replace=False))
    kept_props: list[np.ndarray] = []
    room = max_boxes - len(keep_gt)
    if num_proposals is not None:
        room = min(room, num_proposals)
    if room > 0 and len(props):
        order = rng.permutation(len(props))
        props = props[order]
        if len(gt):
            iou_gt = box_iou(torch.from_numpy(props), torch.from_numpy(gt)).max(dim=1).values.numpy()
            props = props[iou_gt <= dedup_iou]
        for p in props:
            if len(kept_props) >= room:
                break
            if kept_props:
                iou = box_iou(torch.from_numpy(p[None]), torch.from_numpy(np.stack(kept_props))).max().item()
                if iou > dedup_iou:
                    continue
            kept_props.append(p)
    combined = np.concatenate([gt[keep_gt], np.stack(kept_props) if kept_props else np.zeros((0, 4))], axis=0)
    perm = rng.permutation(len(combined))
    boxes = combined[perm]
    position = np.empty(len(combined), dtype=np.int64)
    position[perm] = np.arange(len(combined))
    gt_to_index: list[int | None] = [None] * len(gt)
    for slot, g in enumerate(keep_gt):
        gt_to_index[int(g)] = int(position[slot])
    return BoxList(boxes=boxes, gt_to_index=gt_to_index)


def record_proposals(record: dict, width: int, height: int) -> np.ndarray:
    """The record's ``"proposals"`` (pixel xyxy or ``{"box": ...}``), clipped to the image, with
    degenerate ones dropped: model output is repaired, not rejected (as the dataset does)."""
    props = [p["box"] if isinstance(p, dict) else p for p in (record.get("proposals") or [])]
    if not props:
        return np.zeros((0, 4))
    arr = clip_boxes_to_image(torch.as_tensor(props, dtype=torch.float64).reshape(-1, 4), (height, width)).numpy()
    ok = np.isfinite(arr).all(1) & (arr[:, 2] > arr[:, 0]) & (arr[:, 3] > arr[:, 1])
    return arr[ok]


def record_gt_boxes(record: dict, width: int, height: int) -> np.ndarray:
    """Validated, clipped ground-truth boxes; ``ValueError`` names the problem."""
    regions = record.get("regions") or []
    if not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
        raise ValueError("regions is not a list of objects")
    gt = [r.get("box") for r in regions]
    if any(b is None for b in gt):
        raise ValueError("a region has no box")
    return check_boxes(gt, width, height)
