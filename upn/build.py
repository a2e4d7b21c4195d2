"""Builders (hyperparameters -> modules) and the preset registry.

The model class receives its submodules; these functions decide their sizes.
Presets map a name to a function returning a ``UPNConfig``.
"""
from __future__ import annotations

from typing import Callable

from .backbone import MultiScaleBackbone, build_hf_backbone
from .config import BackboneConfig, ImageConfig, LossConfig, TransformerConfig, UPNConfig
from .decoder import DeformableDecoder, DeformableDecoderLayer
from .encoder import DeformableEncoder, DeformableEncoderLayer
from .losses import SetCriterion
from .matcher import HungarianMatcher


def build_backbone(config: UPNConfig) -> MultiScaleBackbone:
    t = config.transformer
    return MultiScaleBackbone(build_hf_backbone(config.backbone), t.d_model, t.num_extra_levels,
                              t.position_temperature, t.position_offset)


def build_encoder(config: UPNConfig) -> DeformableEncoder:
    t = config.transformer
    return DeformableEncoder([
        DeformableEncoderLayer(t.d_model, config.num_feature_levels, t.num_heads, t.num_points,
                               t.dim_feedforward, t.dropout)
        for _ in range(t.num_encoder_layers)
    ])


def build_decoder(config: UPNConfig) -> DeformableDecoder:
    t = config.transformer
    return DeformableDecoder([
        DeformableDecoderLayer(t.d_model, config.num_feature_levels, t.num_heads, t.num_points,
                               t.dim_feedforward, t.dropout)
        for _ in range(t.num_decoder_layers)
    ], t.d_model, t.share_box_head, t.box_refine_input, t.inverse_sigmoid_eps)


def build_criterion(config: UPNConfig) -> SetCriterion:
    lc = config.loss
    matcher = HungarianMatcher(lc.cost_class, lc.cost_l1, lc.cost_giou, lc.focal_alpha, lc.focal_gamma)
    return SetCriterion(matcher, lc)


# The released UPN's numerics (official_chatrex.md section B.2-B.3); ``chatrex.convert.upn`` relies on them.
OFFICIAL_TRANSFORMER_FIELDS = dict(class_head="dot", share_box_head=True, box_refine_input="raw",
                                   inverse_sigmoid_eps=1e-3, mask_invalid_proposals=False,
                                   position_temperature=20.0, position_offset=0.0)
OFFICIAL_IMAGE_FIELDS = dict(size_rounding="truncate", clip_boxes=False)


def upn_large_config() -> UPNConfig:
    """Full-size UPN, exactly the released ``upn_large.pth`` network (docs/upn.md):
    Swin-L 384 (window 12), 4+1 levels, 6+6 layers, 900 queries, parameter-free prompt
    dot-product class head, one shared box head, official position/refinement numerics."""
    swin_l = dict(image_size=384, patch_size=4, embed_dim=192, depths=[2, 2, 18, 2],
                  num_heads=[6, 12, 24, 48], window_size=12, drop_path_rate=0.2)
    return UPNConfig(
        backbone=BackboneConfig("swin", swin_l, ["stage1", "stage2", "stage3", "stage4"]),
        transformer=TransformerConfig(d_model=256, num_heads=8, dim_feedforward=2048, num_points=4,
                                      num_encoder_layers=6, num_decoder_layers=6, num_queries=900,
                                      num_extra_levels=1, dropout=0.0, **OFFICIAL_TRANSFORMER_FIELDS),
        loss=LossConfig(),
        image=ImageConfig(short_side=800, max_size=1333, **OFFICIAL_IMAGE_FIELDS),
        name="upn-large",
    )


def upn_tiny_config() -> UPNConfig:
    """Small UPN that trains from scratch on CPU: basic-block ResNet (strides 8/16/32) + 1 extra level,
    d_model 128, 2+2 layers, 300 queries, 512 px short side."""
    resnet = dict(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                  layer_type="basic", downsample_in_first_stage=False)
    return UPNConfig(
        backbone=BackboneConfig("resnet", resnet, ["stage2", "stage3", "stage4"]),
        transformer=TransformerConfig(d_model=128, num_heads=4, dim_feedforward=512, num_points=4,
                                      num_encoder_layers=2, num_decoder_layers=2, num_queries=300,
                                      num_extra_levels=1, dropout=0.0),
        loss=LossConfig(),
        image=ImageConfig(short_side=512, max_size=853),
        name="upn-tiny",
    )


PRESETS: dict[str, Callable[[], UPNConfig]] = {
    "upn-large": upn_large_config,
    "upn-tiny": upn_tiny_config,
}


def get_config(name: str) -> UPNConfig:
    """Fresh config of a preset; ValueError lists the known names."""
    if name not in PRESETS:
        raise ValueError(f"unknown UPN preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
