"""Deformable encoder: self-attention over all levels via deformable sampling."""
from __future__ import annotations

import torch
from torch import nn

from .ms_deform_attn import MultiScaleDeformableAttention


class FeedForward(nn.Module):
    """Post-norm FFN block: x + Dropout(W2 ReLU(W1 x)), then LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.linear2(self.dropout(torch.relu(self.linear1(x))))))


class DeformableEncoderLayer(nn.Module):
    def __init__(self, d_model: int, num_levels: int, num_heads: int, num_points: int,
                 dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, num_levels, num_heads, num_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask):
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        return self.ffn(self.norm(src + self.dropout(attn)))


def encoder_reference_points(spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor) -> torch.Tensor:
    """Pixel-centre reference points for every token, seen from every level.

    Args:
        spatial_shapes: (L, 2) int64 (H_l, W_l).
        valid_ratios: (B, L, 2) fraction (w, h) of each map that is unpadded.

    Returns:
        (B, S, L, 2) normalised (x, y) over each level's padded map.
    """
    device = valid_ratios.device
    refs = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        ys, xs = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        # Normalise by the valid extent so a point means the same place in every level.
        ys = ys.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        xs = xs.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack((xs, ys), -1))
    ref = torch.cat(refs, 1)
    return ref[:, :, None] * valid_ratios[:, None]


class DeformableEncoder(nn.Module):
    """Stack of encoder layers (passed in, so depth/width live in the builder)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, spatial_shapes: torch.Tensor,
                valid_ratios: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """src, pos: (B, S, d); padding_mask: (B, S) bool, True = padding. Returns (B, S, d)."""
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios).to(src.dtype)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, padding_mask)
        return src
