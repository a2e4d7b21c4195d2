"""Small shared pieces: MLP, inverse sigmoid, sine embeddings of points/boxes."""
from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (DETR box head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with clamping so boxes at 0 or 1 stay finite."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def sine_embed_boxes(boxes: torch.Tensor, d_model: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine-cosine embedding of normalised boxes.

    Args:
        boxes: (..., 2) normalised (x, y) or (..., 4) normalised cxcywh.
        d_model: features per pair of coordinates; each coordinate gets d_model/2.

    Returns:
        (..., d_model) for 2-d input, (..., 2 * d_model) for 4-d input, ordered
        (y, x[, w, h]) as in DINO.
    """
    half = d_model // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def embed(coord: torch.Tensor) -> torch.Tensor:
        pos = coord[..., None] * (2 * math.pi) / dim_t
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)

    parts = [embed(boxes[..., 1]), embed(boxes[..., 0])]
    if boxes.shape[-1] == 4:
        parts += [embed(boxes[..., 2]), embed(boxes[..., 3])]
    elif boxes.shape[-1] != 2:
        raise ValueError(f"boxes last dim must be 2 or 4, got {boxes.shape[-1]}")
    return torch.cat(parts, dim=-1).to(boxes.dtype)


def sine_position_embedding(padding_mask: torch.Tensor, d_model: int, temperature: float = 10000.0,
                            offset: float = 0.5) -> torch.Tensor:
    """DETR 2-D sine position embedding normalised over the valid (unpadded) area.

    Positions are ``(cumsum - offset) / (valid extent + 1e-6)``: offset 0.5 puts them at
    pixel centres (upn-tiny); offset 0 with temperature 20 is the official UPN's
    ``PositionEmbeddingSineHW``.

    Args:
        padding_mask: (B, H, W) bool, True = padding.

    Returns:
        (B, d_model, H, W), channels ordered (y, x).
    """
    valid = (~padding_mask).float()
    y = valid.cumsum(1)
    x = valid.cumsum(2)
    eps = 1e-6
    y = (y - offset) / (y[:, -1:, :] + eps)
    x = (x - offset) / (x[:, :, -1:] + eps)
    emb = sine_embed_boxes(torch.stack([x, y], dim=-1), d_model, temperature)  # (B, H, W, d)
    return emb.permute(0, 3, 1, 2).contiguous()
