"""Stage 4: boxes for each phrase, then one phrase per box.

For each phrase, the grounder's candidates are clipped to the image, kept when their score is
at least ``box_threshold``, de-duplicated with NMS (``nms_iou``) and capped at
``max_boxes_per_phrase``. Then phrases compete for boxes: candidates of all phrases are taken
in descending score and a box overlapping an already kept box by more than ``assign_iou`` is
dropped, so each object ends up with the phrase that grounded it most confidently.

Output: ``record["regions"]`` = ``[{"box", "score", "phrase"}]`` (pixel xyxy), sorted by
(phrase order, score), and ``scratch["region_phrase"]`` = the phrase index of each region.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou, nms

from ..backends.base import Grounder
from ..sample import Sample
from .base import Stage, active


def select_boxes(candidates, phrases: list[str], width: int, height: int, box_threshold: float, nms_iou: float,
                 max_per_phrase: int, assign_iou: float) -> list[tuple[int, list[float], float]]:
    """``(phrase index, pixel xyxy box, score)`` after thresholds, per-phrase NMS and assignment.

    ``candidates``: GroundedBox-like objects with ``phrase``, ``box`` (pixel xyxy) and ``score``.
    """
    index = {p: i for i, p in enumerate(phrases)}
    per_phrase: dict[int, list[tuple[list[float], float]]] = {}
    for c in candidates:
        if c.phrase not in index or not c.score >= box_threshold:
            continue
        x1, y1, x2, y2 = (float(v) for v in c.box)
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        if x2 - x1 >= 1 and y2 - y1 >= 1:
            per_phrase.setdefault(index[c.phrase], []).append(([x1, y1, x2, y2], float(c.score)))
    pooled = []
    for p, items in per_phrase.items():
        boxes = torch.tensor([b for b, _ in items], dtype=torch.float32)
        scores = torch.tensor([s for _, s in items], dtype=torch.float32)
        for k in nms(boxes, scores, nms_iou)[:max_per_phrase].tolist():
            pooled.append((p, items[k][0], items[k][1]))
    pooled.sort(key=lambda t: (-t[2], t[0]))
    kept: list[tuple[int, list[float], float]] = []
    for p, box, score in pooled:
        if kept:
            overlap = box_iou(torch.tensor([box]), torch.tensor([b for _, b, _ in kept]))[0]
            if float(overlap.max()) > assign_iou:
                continue
        kept.append((p, box, score))
    return sorted(kept, key=lambda t: (t[0], -t[2]))


class GroundingStage(Stage):
    name = "grounding"
    version = "1"
    requires = ("phrases",)
    provides = ("regions", "region_phrase")
    uses_model = True

    def __init__(self, grounder: Grounder, box_threshold: float = 0.1, nms_iou: float = 0.5, max_boxes_per_phrase: int = 10, assign_iou: float = 0.7):
        for name, v in (("box_threshold", box_threshold), ("nms_iou", nms_iou), ("assign_iou", assign_iou)):
            if not 0 <= v <= 1:
                raise ValueError(f"grounding.{name} must be in [0, 1], got {v}")
        if max_boxes_per_phrase < 1:
            raise ValueError(f"grounding.max_boxes_per_phrase must be >= 1, got {max_boxes_per_phrase}")
        self.grounder = grounder
        self.box_threshold, self.nms_iou, self.max_per_phrase, self.assign_iou = box_threshold, nms_iou, max_boxes_per_phrase, assign_iou

    def process(self, samples: list[Sample]) -> None:
        todo = active(samples)
        if not todo:
            return
        phrases = [[p["text"] for p in s.scratch["phrases"]] for s in todo]
        results = self.grounder.ground([s.image for s in todo], phrases)
        assert len(results) == len(todo), f"grounder returned {len(results)} results for {len(todo)} images"
        for s, texts, candidates in zip(todo, phrases, results):
            kept = select_boxes(candidates, texts, s.image.width, s.image.height, self.box_threshold, self.nms_iou, self.max_per_phrase, self.assign_iou)
            if not kept:
                s.reject(self.name, "no phrase could be grounded")
                continue
            s.record["regions"] = [{"box": [round(v, 2) for v in box], "score": round(score, 4), "phrase": texts[p]} for p, box, score in kept]
            s.scratch["region_phrase"] = [p for p, _, _ in kept]

    def provenance(self) -> dict:
        return {**self.grounder.provenance(), "version": self.version}
