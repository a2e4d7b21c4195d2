"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

No compiled extension: sampling uses ``F.grid_sample`` so it runs on CPU and on
any accelerator torch supports.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinearly sample every level at the given points and sum them with weights.

    Args:
        value: (N, S, M, D) per-head values, S = sum_l H_l * W_l, levels flattened
            row-major in the order of ``spatial_shapes``.
        spatial_shapes: (L, 2) int64, (H_l, W_l) per level.
        sampling_locations: (N, Lq, M, L, P, 2), (x, y) normalised to [0, 1] over
            each level's map (0 = left/top edge, 1 = right/bottom edge).
        attention_weights: (N, Lq, M, L, P), usually softmax-ed over (L, P).

    Returns:
        (N, Lq, M * D). Points outside a map read zeros (``padding_mode="zeros"``)
        and pixel centres sit at (i + 0.5) / W (``align_corners=False``).
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    if spatial_shapes.shape != (num_levels, 2):
        raise ValueError(f"spatial_shapes must be ({num_levels}, 2), got {tuple(spatial_shapes.shape)}")
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    if sum(sizes) != value.shape[1]:
        raise ValueError(f"value has S={value.shape[1]} tokens but spatial_shapes sum to {sum(sizes)}")
    value_list = value.split(sizes, dim=1)
    # grid_sample wants coordinates in [-1, 1].
    grids = 2.0 * sampling_locations - 1.0
    weights = attention_weights.transpose(1, 2).reshape(n * m, lq, num_levels, num_points)
    out = None
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = value_list[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, int(h), int(w))
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # (N*M, D, Lq, P)
        # Weighted sum over points as a batched matmul, level by level: no (D, Lq, L, P) stack is
        # materialised (stack + multiply + sum was 23% of UPN's CPU time; 1.45x faster encoder layer).
        part = torch.matmul(sampled.permute(0, 2, 1, 3), weights[:, :, lvl, :, None]).squeeze(-1)  # (N*M, Lq, D)
        out = part if out is None else out + part
    return out.view(n, m, lq, d).permute(0, 2, 1, 3).reshape(n, lq, m * d)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention module: predicts offsets and weights from the query.

    Args (forward):
        query: (N, Lq, C).
        reference_points: (N, Lq, L, 2) normalised (x, y) or (N, Lq, L, 4)
            normalised cxcywh boxes, already scaled into each level's valid area.
        value: (N, S, C) flattened multi-level features.
        spatial_shapes: (L, 2) int64 (H_l, W_l).
        value_padding_mask: optional (N, S) bool, True = padding (value zeroed).

    Returns:
        (N, Lq, C).
    """

    def __init__(self, d_model: int, num_levels: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        assert d_model % num_heads == 0, f"d_model {d_model} not divisible by heads {num_heads}"
        self.d_model, self.num_levels = d_model, num_levels
        self.num_heads, self.num_points = num_heads, num_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Zero offset weights with a bias that fans the heads out in a ring, point k
        # at distance k+1: the sampling starts as a fixed, spread-out pattern
        # (Deformable DETR init), which matters when training from scratch.
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        value_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n, lq, _ = query.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value)
        if value_padding_mask is not None:
            v = v.masked_fill(value_padding_mask[..., None], 0.0)
        v = v.view(n, v.shape[1], m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, lv, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, lv * p).softmax(-1).view(n, lq, m, lv, p)
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (W, H).
            normaliser = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(query.dtype)
            locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # Offsets are relative to the box size: a point can reach half a box away per step.
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / p * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points last dim must be 2 or 4, got {reference_points.shape[-1]}")
        out = multi_scale_deformable_attention(v, spatial_shapes, locations, weights)
        return self.output_proj(out)
