"""Projectors from vision feature space to the LLM's hidden size."""

from __future__ import annotations

from torch import nn


def build_projector(projector_type: str, in_dim: int, out_dim: int) -> nn.Module:
    """``"mlp2x_gelu"``: Linear(in, out), GELU, Linear(out, out) as in LLaVA-1.5 / ChatRex;
    ``"linear"``: a single Linear(in, out)."""
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    if projector_type == "linear":
        return nn.Linear(in_dim, out_dim)
    raise ValueError(f"unknown projector_type {projector_type!r}")
