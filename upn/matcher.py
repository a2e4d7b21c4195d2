"""Hungarian matching between predicted and target boxes (class-agnostic)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou


def focal_class_cost(logits: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Deformable-DETR focal matching cost of calling each query positive.

    logits: (Q,) prompt-similarity logits. Returns (Q,): the focal loss of the
    query being positive minus that of it being negative (lower = better match).
    """
    p = logits.sigmoid()
    pos = alpha * (1 - p) ** gamma * -(p + 1e-8).log()
    neg = (1 - alpha) * p ** gamma * -(1 - p + 1e-8).log()
    return pos - neg


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising cost_class*focal + cost_l1*L1 + cost_giou*(-GIoU).

    Holds no parameters; it runs without gradient because the assignment is
    discrete (the losses are computed afterwards, with gradient).
    """

    def __init__(self, cost_class: float = 2.0, cost_l1: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        super().__init__()
        if cost_class < 0 or cost_l1 < 0 or cost_giou < 0 or cost_class + cost_l1 + cost_giou == 0:
            raise ValueError(f"matcher costs must be >= 0 and not all 0, got "
                             f"cost_class={cost_class}, cost_l1={cost_l1}, cost_giou={cost_giou}")
        self.cost_class, self.cost_l1, self.cost_giou = cost_class, cost_l1, cost_giou
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """Cost (Q, K) for one image.

        Args:
            logits: (Q,) logits; boxes: (Q, 4) and target_boxes: (K, 4), normalised cxcywh.
        """
        c_cls = focal_class_cost(logits, self.focal_alpha, self.focal_gamma)[:, None]
        c_l1 = torch.cdist(boxes, target_boxes, p=1)
        c_giou = -generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"),
                                      box_convert(target_boxes, "cxcywh", "xyxy"))
        return self.cost_class * c_cls + self.cost_l1 * c_l1 + self.cost_giou * c_giou

    @staticmethod
    def solve(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Minimum-cost assignment of a (Q, K) matrix -> (row indices, col indices), int64.

        Raises RuntimeError when the cost has NaN/inf (e.g. a diverged model).
        """
        cost_np = cost.detach().float().cpu().numpy()
        if not np.isfinite(cost_np).all():
            raise RuntimeError("matching cost contains NaN/inf; predictions or targets are not finite")
        rows, cols = linear_sum_assignment(cost_np)
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)

    def forward(self, logits: torch.Tensor, boxes: torch.Tensor,
                targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match a batch.

        Args:
            logits: (B, Q); boxes: (B, Q, 4) normalised cxcywh.
            targets: B dicts with ``boxes`` (K_b, 4) normalised cxcywh.

        Returns:
            B pairs (query indices, target indices), each (min(Q, K_b),) int64.
        """
        out = []
        with torch.no_grad():
            for b, tgt in enumerate(targets):
                tb = tgt["boxes"]
                if tb.numel() == 0:
                    empty = torch.zeros(0, dtype=torch.int64)
                    out.append((empty, empty.clone()))
                    continue
                out.append(self.solve(self.cost_matrix(logits[b].float(), boxes[b].float(), tb.float())))
        return out
