"""Deformable decoder with iterative box refinement (DINO-style)."""
from __future__ import annotations

import torch
from torch import nn

from .encoder import FeedForward
from .layers import MLP, inverse_sigmoid, sine_embed_boxes
from .ms_deform_attn import MultiScaleDeformableAttention


class DeformableDecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention, FFN (post-norm)."""

    def __init__(self, d_model: int, num_levels: int, num_heads: int, num_points: int,
                 dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MultiScaleDeformableAttention(d_model, num_levels, num_heads, num_points)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, memory_padding_mask):
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attn = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, memory_padding_mask)
        tgt = self.norm2(tgt + self.dropout(attn))
        return self.ffn(tgt)


class DeformableDecoder(nn.Module):
    """Decoder layers plus one box-refinement MLP per layer.

    Each layer predicts a delta in logit space: box_{l+1} = sigmoid(delta +
    inverse_sigmoid(box_l)). The next layer sees the box detached, so every layer
    learns its own refinement (Deformable DETR).
    """

    def __init__(self, layers: list[nn.Module], d_model: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.d_model = d_model
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.norm = nn.LayerNorm(d_model)
        self.bbox_heads = nn.ModuleList(MLP(d_model, d_model, 4, 3) for _ in layers)
        for head in self.bbox_heads:
            # Zero last layer: each layer starts by keeping its input box.
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def forward(self, tgt: torch.Tensor, reference_boxes: torch.Tensor, memory: torch.Tensor,
                spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor,
                memory_padding_mask: torch.Tensor) -> tuple[list, list]:
        """Run all layers.

        Args:
            tgt: (B, Q, d) content queries.
            reference_boxes: (B, Q, 4) normalised cxcywh (relative to the unpadded image).
            memory: (B, S, d); memory_padding_mask: (B, S) bool, True = padding.
            valid_ratios: (B, L, 2) unpadded (w, h) fraction per level.

        Returns:
            hidden: list of (B, Q, d) per layer (normed);
            boxes: list of (B, Q, 4) normalised cxcywh per layer (with gradient).
        """
        hidden, boxes = [], []
        ref = reference_boxes
        for layer, head in zip(self.layers, self.bbox_heads):
            # Boxes are relative to the unpadded image; the attention samples the padded map.
            ref_input = ref[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            query_pos = self.ref_point_head(sine_embed_boxes(ref_input[:, :, 0], self.d_model))
            tgt = layer(tgt, query_pos, ref_input, memory, spatial_shapes, memory_padding_mask)
            out = self.norm(tgt)
            new_ref = (head(out) + inverse_sigmoid(ref)).sigmoid()
            hidden.append(out)
            boxes.append(new_ref)
            ref = new_ref.detach()
        return hidden, boxes
