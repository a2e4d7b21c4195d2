"""Stage 6: verify region descriptions against their phrase, and rewrite each region to a short
referring expression that is unique in its image.

1. Verify: the verifier judges each ``(grounded phrase, region description)`` pair; regions it
   rejects are dropped from the record (a caption-grounding error or a wrong description).
2. Rewrite: the rewriter proposes a referring expression for each kept region. When
   ``check_unique`` is on, the expression is grounded again with the grounder and kept only if
   every box found (score >= ``box_threshold``, after NMS) overlaps the region by IoU >=
   ``unique_iou``: it names this object and nothing else. Otherwise the region gets no
   ``referring`` field.

Counts go to ``record["provenance"]["verify"]``: ``regions_rejected``, ``referring_unique``,
``referring_not_unique``.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

from ..backends.base import Grounder, RegionText, Rewriter, Verifier
from ..sample import Sample
from .base import Stage, active
from .grounding import select_boxes


class VerifyRewriteStage(Stage):
    name = "verify"
    version = "1"
    requires = ("regions", "region_text", "region_phrase")
    provides = ("referring",)
    uses_model = True

    def __init__(self, verifier: Verifier, rewriter: Rewriter | None, grounder: Grounder | None = None, check_unique: bool = True,
                 unique_iou: float = 0.5, box_threshold: float = 0.1, nms_iou: float = 0.5):
        if check_unique and grounder is None:
            raise ValueError("verify.check_unique needs a grounder backend")
        self.verifier, self.rewriter, self.grounder = verifier, rewriter, grounder
        self.check_unique, self.unique_iou, self.box_threshold, self.nms_iou = check_unique, unique_iou, box_threshold, nms_iou

    def is_unique(self, image, expression: str, box: list[float]) -> bool:
        found = self.grounder.ground([image], [[expression]])[0]
        kept = select_boxes(found, [expression], image.width, image.height, self.box_threshold, self.nms_iou, 100, 1.0)
        if not kept:
            return False
        iou = box_iou(torch.tensor([b for _, b, _ in kept]), torch.tensor([box]))[:, 0]
        return bool((iou >= self.unique_iou).all())

    def process(self, samples: list[Sample]) -> None:
        for s in active(samples):
            regions, owner = s.record["regions"], s.scratch["region_phrase"]
            grounded = [s.scratch["phrases"][p]["text"] for p in owner]
            ok = self.verifier.consistent([(g, r["description"]) for g, r in zip(grounded, regions)])
            kept = [i for i, good in enumerate(ok) if good]
            counts = {"regions_rejected": len(regions) - len(kept), "referring_unique": 0, "referring_not_unique": 0}
            regions, owner = [regions[i] for i in kept], [owner[i] for i in kept]
            if not regions:
                s.reject(self.name, "every region description contradicts its phrase")
                continue
            if self.rewriter is not None:
                boxes = [r["box"] for r in regions]
                for i, region in enumerate(regions):
                    text = RegionText(region["category"], region["phrase"], region["description"])
                    expression = " ".join(self.rewriter.referring(s.image, boxes, i, text).split())
                    if expression and (not self.check_unique or self.is_unique(s.image, expression, region["box"])):
                        region["referring"] = expression
                        counts["referring_unique"] += 1
                    else:
                        counts["referring_not_unique"] += 1
            s.record["regions"], s.scratch["region_phrase"] = regions, owner
            s.scratch["verify_counts"] = counts

    def provenance(self) -> dict:
        out = {"verifier": self.verifier.provenance(), "version": self.version}
        if self.rewriter is not None:
            out["rewriter"] = self.rewriter.provenance()
        return out
