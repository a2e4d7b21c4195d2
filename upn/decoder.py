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
    """Decoder layers plus box-refinement MLP(s).

    Each layer predicts a delta in logit space: box_{l+1} = sigmoid(delta +
    inverse_sigmoid(box_l)). The next layer sees the box detached, so every layer
    learns its own refinement (Deformable DETR).

    Args:
        layers: the decoder layers.
        d_model: width.
        share_box_head: one box MLP for all layers (the released UPN) instead of one each.
        box_refine_input: "normed" refines the reference from ``norm(layer output)``
            (upn-tiny); "raw" refines it from the un-normalised output while the
            returned boxes still come from the normalised one (DINO / official UPN).
        inverse_sigmoid_eps: clamp used by ``inverse_sigmoid`` (official 1e-3).
    """

    def __init__(self, layers: list[nn.Module], d_model: int, share_box_head: bool = False,
                 box_refine_input: str = "normed", inverse_sigmoid_eps: float = 1e-5) -> None:
        super().__init__()
        assert box_refine_input in ("normed", "raw"), f"unknown box_refine_input {box_refine_input!r}"
        self.layers = nn.ModuleList(layers)
        self.d_model = d_model
        self.box_refine_input = box_refine_input
        self.inverse_sigmoid_eps = inverse_sigmoid_eps
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.norm = nn.LayerNorm(d_model)
        # A shared head is stored once (not aliased per layer) so the state dict has no duplicates.
        self.bbox_heads = nn.ModuleList(MLP(d_model, d_model, 4, 3) for _ in range(1 if share_box_head else len(layers)))
        for head in self.bbox_heads:
            # Zero last layer: each layer starts by keeping its input box.
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def box_head(self, layer_index: int) -> nn.Module:
        return self.bbox_heads[layer_index if len(self.bbox_heads) > 1 else 0]

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
        eps = self.inverse_sigmoid_eps
        for i, layer in enumerate(self.layers):
            head = self.box_head(i)
            # Boxes are relative to the unpadded image; the attention samples the padded map.
            ref_input = ref[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            query_pos = self.ref_point_head(sine_embed_boxes(ref_input[:, :, 0], self.d_model))
            tgt = layer(tgt, query_pos, ref_input, memory, spatial_shapes, memory_padding_mask)
            out = self.norm(tgt)
            ref_logit = inverse_sigmoid(ref, eps)
            box = (head(out) + ref_logit).sigmoid()
            hidden.append(out)
            boxes.append(box)
            if self.box_refine_input == "raw":
                ref = (head(tgt) + ref_logit).sigmoid().detach()
            else:
                ref = box.detach()
        return hidden, boxes
