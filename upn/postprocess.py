"""Turning raw predictions into pixel-space proposals."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchvision.ops import box_convert, nms


@dataclass
class Proposals:
    """Proposals for one image.

    boxes: (K, 4) float32, absolute pixel xyxy in the original image.
    scores: (K,) float32 in [0, 1], sorted descending.
    granularity: K strings, "fine" or "coarse" (the prompt that produced each box).
    image_size: (width, height) of the original image.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    granularity: list = field(default_factory=list)
    image_size: tuple = (0, 0)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls, image_size: tuple) -> "Proposals":
        return cls(torch.zeros(0, 4), torch.zeros(0), [], tuple(image_size))


def select_proposals(scores: torch.Tensor, boxes_cxcywh: torch.Tensor, granularity: list,
                     image_size: tuple, min_score: float, nms_iou: float, max_boxes: int,
                     clip: bool = True) -> Proposals:
    """Threshold, class-agnostic NMS and top-k for one image.

    Args:
        scores: (N,) sigmoid scores; boxes_cxcywh: (N, 4) normalised cxcywh;
        granularity: N strings; image_size: (width, height) pixels.
        clip: clamp the pixel boxes to the image (the official UPN wrapper does not).
    """
    w, h = image_size
    keep = scores >= min_score
    if not bool(keep.any()):
        return Proposals.empty(image_size)
    scores, boxes = scores[keep].float(), boxes_cxcywh[keep].float()
    gran = [g for g, k in zip(granularity, keep.tolist()) if k]
    xyxy = box_convert(boxes, "cxcywh", "xyxy") * torch.tensor([w, h, w, h], dtype=torch.float32)
    if clip:
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
    # Fine and coarse boxes compete in one NMS: a part that coincides with its
    # whole object is the same proposal for the LLM (docs/architecture.md).
    order = nms(xyxy, scores, nms_iou)[:max_boxes]
    return Proposals(xyxy[order], scores[order], [gran[i] for i in order.tolist()], tuple(image_size))
