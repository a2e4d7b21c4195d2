"""The object encoder: one feature vector per box from the high-resolution feature pyramid.

All ConvNeXt stages are upsampled to the stage-0 grid and concatenated along channels, each box
is ROI-aligned to ``roi_output_size``², mean pooled, and a sine-cosine embedding of the box's
normalised (cx, cy, w, h) is added (in that order, or (cy, cx, w, h) as the released models
do). The projector to the LLM width lives in the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, roi_align

ORDERS = {"cxcywh": (0, 1, 2, 3), "cycxwh": (1, 0, 2, 3)}


def box_sine_embedding(boxes_cxcywh: torch.Tensor, dim: int, temperature: float = 10000.0, scale: float = 2 * math.pi, order: str = "cxcywh") -> torch.Tensor:
    """Sine-cosine embedding of normalised boxes.

    Args:
        boxes_cxcywh: (K, 4) normalised cxcywh in [0, 1].
        dim: output width; ``dim / 4`` per coordinate, which must be even.
        order: ``"cxcywh"`` or ``"cycxwh"``: the order of the four coordinate blocks.

    Returns:
        (K, dim): for each coordinate in ``order``, ``dim/4`` values with sin on even and cos
        on odd channels (the DETR/DINO convention).
    """
    assert dim % 8 == 0, f"dim={dim} must be divisible by 8"
    per_coord = dim // 4
    idx = torch.arange(per_coord, dtype=torch.float32, device=boxes_cxcywh.device)
    freqs = temperature ** (2 * (idx // 2) / per_coord)
    pos = boxes_cxcywh.float()[:, ORDERS[order], None] * scale / freqs  # (K, 4, per_coord)
    emb = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(2)
    return emb.flatten(1)


class ObjectEncoder(nn.Module):
    """Multi-level ROI-align pooling of boxes (parameter-free; the projector is separate).

    Args:
        feature_levels: indices into the stage list passed to :meth:`forward`.
        output_size: ROI-align output side.
        sampling_ratio: ROI-align sampling points per bin side (<= 0: adaptive).
        temperature, scale: position-embedding parameters.
        aligned: ``roi_align(aligned=...)``.
        order: coordinate order of the position embedding (:func:`box_sine_embedding`).
        image_size: side of the high-resolution input in pixels; boxes are ROI-aligned in those
            pixels with ``spatial_scale`` = fused grid / image size, as the released code does.
    """

    def __init__(self, feature_levels, output_size: int = 7, sampling_ratio: int = 2, temperature: float = 10000.0, scale: float = 2 * math.pi,
                 aligned: bool = True, order: str = "cxcywh", image_size: int | None = None):
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"order must be one of {sorted(ORDERS)}, got {order!r}")
        self.feature_levels = list(feature_levels)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.temperature = temperature
        self.scale = scale
        self.aligned = aligned
        self.order = order
        self.image_size = image_size

    def fuse_levels(self, stage_features) -> torch.Tensor:
        """(B, C_l, H_l, W_l) per stage -> (B, sum C_l, H_0, W_0), upsampled bilinearly to the
        finest selected level."""
        feats = [stage_features[i] for i in self.feature_levels]
        size = feats[0].shape[-2:]
        return torch.cat(
            [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats],
            dim=1,
        )

    def forward(self, stage_features, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """
        Args:
            stage_features: sequence of ConvNeXt stage outputs, each (B, C_l, H_l, W_l).
            boxes: B tensors of shape (K_i, 4), normalised xyxy in [0, 1] on the padded square.

        Returns:
            B tensors of shape (K_i, C) with C = sum of the selected C_l (position embedding added).
        """
        assert len(boxes) == stage_features[0].shape[0], f"{len(boxes)} box lists for a batch of {stage_features[0].shape[0]}"
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            dim = sum(stage_features[i].shape[1] for i in self.feature_levels)
            return [stage_features[0].new_zeros((0, dim)) for _ in boxes]
        fused = self.fuse_levels(stage_features)
        height, width = fused.shape[-2:]
        # Boxes in input pixels and a spatial scale, as the released code. With a power-of-two
        # ratio (0.25 for every preset) this is bit-identical to scaling straight to the grid.
        size = self.image_size or width
        rois = [b.to(fused.dtype) * size for b in boxes]
        # aligned=True: pixel centres at +0.5, matching F.interpolate(align_corners=False).
        pooled = roi_align(fused, rois, output_size=self.output_size, spatial_scale=width / size, sampling_ratio=self.sampling_ratio, aligned=self.aligned)
        pooled = pooled.mean(dim=(2, 3))
        all_boxes = torch.cat(boxes).to(fused.dtype)
        pos = box_sine_embedding(box_convert(all_boxes, "xyxy", "cxcywh"), pooled.shape[1], self.temperature, self.scale, self.order)
        return list((pooled + pos.to(pooled.dtype)).split(counts))
