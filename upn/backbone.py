"""Multi-scale backbone: a transformers ``AutoBackbone`` plus input projections.

Why transformers ``AutoBackbone`` and not timm ``features_only``: transformers is
already a hard dependency of the project (the MLLM uses it), timm is not; and its
config classes (``SwinConfig``, ``ResNetConfig``) build the full-size Swin-L on the
``meta`` device for a parameter count without downloading anything, while the
same mechanism gives a few-hundred-k-parameter ResNet for ``upn-tiny``. The
stage channels come from ``backbone.channels`` so no per-architecture tables.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoBackbone, AutoConfig

from .config import BackboneConfig
from .layers import sine_position_embedding


def build_hf_backbone(cfg: BackboneConfig) -> nn.Module:
    """Randomly initialised transformers backbone returning ``cfg.out_features`` maps."""
    hf_config = AutoConfig.for_model(cfg.model_type, out_features=list(cfg.out_features), **cfg.kwargs)
    return AutoBackbone.from_config(hf_config)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32 if channels % 32 == 0 else 1, channels)


@dataclass
class MultiScaleFeatures:
    """Per-level features, all lists of length L (finest first).

    features: (B, d_model, H_l, W_l); masks: (B, H_l, W_l) bool, True = padding;
    pos: (B, d_model, H_l, W_l) sine position embeddings.
    """

    features: list
    masks: list
    pos: list


class MultiScaleBackbone(nn.Module):
    """Backbone body + 1x1 projections to ``d_model`` + stride-2 extra levels.

    Args:
        body: module with ``channels`` (list[int]) whose ``forward(pixel_values)``
            returns an object with ``feature_maps`` (tuple of (B, C_i, H_i, W_i)).
        d_model: projected width.
        num_extra_levels: 3x3 stride-2 conv levels appended after the last map.
        position_temperature, position_offset: see ``sine_position_embedding``.
    """

    def __init__(self, body: nn.Module, d_model: int, num_extra_levels: int,
                 position_temperature: float = 10000.0, position_offset: float = 0.5) -> None:
        super().__init__()
        self.body = body
        self.d_model = d_model
        self.position_temperature = position_temperature
        self.position_offset = position_offset
        channels = list(body.channels)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, d_model, kernel_size=1), _group_norm(d_model)) for c in channels
        )
        extra = []
        in_ch = channels[-1]
        for _ in range(num_extra_levels):
            extra.append(nn.Sequential(nn.Conv2d(in_ch, d_model, 3, stride=2, padding=1), _group_norm(d_model)))
            in_ch = d_model
        self.extra_proj = nn.ModuleList(extra)
        for seq in list(self.input_proj) + list(self.extra_proj):
            nn.init.xavier_uniform_(seq[0].weight, gain=1)
            nn.init.zeros_(seq[0].bias)

    @property
    def num_levels(self) -> int:
        return len(self.input_proj) + len(self.extra_proj)

    def forward(self, pixel_values: torch.Tensor, padding_mask: torch.Tensor) -> MultiScaleFeatures:
        """pixel_values: (B, 3, H, W) normalised; padding_mask: (B, H, W) bool, True = padding."""
        maps = list(self.body(pixel_values).feature_maps)
        feats = [proj(x) for proj, x in zip(self.input_proj, maps)]
        src = maps[-1]
        for i, proj in enumerate(self.extra_proj):
            src = proj(src)
            feats.append(src)
        masks, pos = [], []
        for f in feats:
            m = F.interpolate(padding_mask[None].float(), size=f.shape[-2:], mode="nearest")[0].bool()
            masks.append(m)
            pos.append(sine_position_embedding(m, self.d_model, self.position_temperature,
                                              self.position_offset).to(f.dtype))
        return MultiScaleFeatures(feats, masks, pos)
