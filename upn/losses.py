"""Set-prediction losses: sigmoid focal on the prompt logit, L1 and GIoU on boxes."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from .config import LossConfig
from .matcher import HungarianMatcher


class SetCriterion(nn.Module):
    """DETR set loss over the final layer, every earlier decoder layer and the encoder proposals.

    ``forward(outputs, targets)`` takes
      - ``outputs``: dict with ``logits`` (B, Q), ``boxes`` (B, Q, 4) normalised cxcywh,
        optional ``aux`` (list of such dicts, earlier decoder layers) and ``enc``
        (one such dict, the selected encoder proposals);
      - ``targets``: B dicts with ``boxes`` (K_b, 4) normalised cxcywh (K_b may be 0).
    and returns a dict: ``loss_class``, ``loss_l1``, ``loss_giou`` (final layer),
    the same with suffix ``_dec{i}`` / ``_enc``, and ``loss``, their weighted sum.
    Every value is a finite scalar even when a batch has no targets (the box
    losses are then 0 and the focal loss pushes every query to background).
    """

    def __init__(self, matcher: HungarianMatcher, cfg: LossConfig) -> None:
        super().__init__()
        self.matcher = matcher
        self.cfg = cfg

    def single(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict],
               num_boxes: float) -> dict[str, torch.Tensor]:
        """Losses of one prediction set, normalised by the batch's number of target boxes."""
        indices = self.matcher(logits, boxes, targets)
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(logits.device)
        src_idx = torch.cat([src for src, _ in indices]).to(logits.device)
        labels = torch.zeros_like(logits)
        labels[batch_idx, src_idx] = 1.0
        loss_class = sigmoid_focal_loss(logits, labels, alpha=self.cfg.focal_alpha,
                                        gamma=self.cfg.focal_gamma, reduction="sum") / num_boxes
        matched = boxes[batch_idx, src_idx]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(boxes)
        loss_l1 = (matched - tgt).abs().sum() / num_boxes
        if matched.numel():
            giou = generalized_box_iou(box_convert(matched, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"))
            loss_giou = (1 - torch.diag(giou)).sum() / num_boxes
        else:
            loss_giou = boxes.sum() * 0.0  # keeps the graph connected for DDP
        return {"loss_class": loss_class, "loss_l1": loss_l1, "loss_giou": loss_giou}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        if len(targets) != outputs["logits"].shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {outputs['logits'].shape[0]} images")
        # Average over boxes, not images, so crowded images weigh more (DETR convention).
        # Not all-reduced across processes: each process normalises by its own count.
        num_boxes = float(max(sum(int(t["boxes"].shape[0]) for t in targets), 1))
        sets = [("", outputs)]
        if self.cfg.aux_loss:
            sets += [(f"_dec{i}", aux) for i, aux in enumerate(outputs.get("aux", []))]
        if self.cfg.encoder_loss and outputs.get("enc") is not None:
            sets.append(("_enc", outputs["enc"]))
        losses: dict[str, torch.Tensor] = {}
        weights = {"loss_class": self.cfg.weight_class, "loss_l1": self.cfg.weight_l1,
                   "loss_giou": self.cfg.weight_giou}
        total = outputs["logits"].new_zeros(())
        for suffix, out in sets:
            for name, value in self.single(out["logits"], out["boxes"], targets, num_boxes).items():
                losses[name + suffix] = value
                total = total + weights[name] * value
        losses["loss"] = total
        return losses
