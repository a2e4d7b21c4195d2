"""RefCOCO / RefCOCO+ / RefCOCOg referring expression comprehension.

One question per sentence (the expression as ``[OBJ]`` of the detection prompt); Acc@0.5 is
scored on the first returned box; the proposal ceiling is the share of sentences where some
proposal overlaps the target by IoU >= 0.5 (no answer can beat it). Boxes are pixel xyxy.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

from .protocol import RecProtocol

# The standard splits papers report (UNC for RefCOCO/+, UMD for RefCOCOg).
STANDARD_SPLITS = (("refcoco", "val"), ("refcoco", "testA"), ("refcoco", "testB"), ("refcoco+", "val"), ("refcoco+", "testA"),
                   ("refcoco+", "testB"), ("refcocog", "val"), ("refcocog", "test"))
SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


def _iou(box, boxes) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0)
    a = torch.as_tensor(np.asarray(box, dtype=np.float64).reshape(1, 4))
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    return box_iou(a, b)[0].numpy()


def group_by_image(sentences: list) -> list[list]:
    """Sentences grouped by image, groups in first-appearance order: one encoding per image."""
    groups: dict = {}
    for s in sentences:
        groups.setdefault(s.image, []).append(s)
    return list(groups.values())


def run_image(answerer, sentences: list, protocol: RecProtocol, image, done: set[str], proposals=None) -> list[dict]:
    """Prediction lines for the sentences of one image not yet in ``done``; ``proposals`` as
    :func:`chatrex.bench.detection.run_image`."""
    template = answerer.prompts.detection["referring"]
    boxes, _ = answerer.proposals(image) if proposals is None else proposals
    lines = []
    for s in sentences:
        key = str(s.sent_id)
        if key in done:
            continue
        raw, groups = answerer.answer(image, boxes, template.format(phrase=s.text))
        indices = [i for _, idx in groups for i in idx if 0 <= i < len(boxes)]
        box = [float(v) for v in boxes[indices[0]]] if indices else None
        iou = float(_iou(s.box, [box])[0]) if box is not None else 0.0
        ceiling = float(_iou(s.box, boxes).max()) if len(boxes) else 0.0
        lines.append({"key": key, "id": s.sent_id, "image_id": s.image_id, "box": box, "iou": iou,
                      "correct": bool(box is not None and iou >= protocol.iou_threshold),
                      "best_proposal_iou": ceiling, "answer": raw})
    return lines


def finalize(lines: list[dict], protocol: RecProtocol) -> dict:
    n = len(lines)
    return {
        "acc@0.5": sum(ln["correct"] for ln in lines) / n if n else 0.0,
        "proposal_ceiling": sum(ln["best_proposal_iou"] >= protocol.iou_threshold for ln in lines) / n if n else 0.0,
        "sentences": n,
        "no_box": sum(ln["box"] is None for ln in lines),
    }
