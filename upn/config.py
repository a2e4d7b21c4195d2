"""Nested, validated configuration for UPN.

``UPNConfig`` holds four sub-configs (backbone, transformer, loss, image). Every
field is checked in ``__post_init__``; a bad value raises ``ValueError`` naming
the dotted field, e.g. ``transformer.d_model``. ``to_dict``/``from_dict`` give a
JSON round trip (``config.json`` next to ``model.safetensors``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_BACKBONES = ("swin", "resnet", "convnext")
CLASS_HEADS = ("projected", "dot")
BOX_REFINE_INPUTS = ("normed", "raw")
SIZE_ROUNDINGS = ("round", "truncate")


def _check_choice(owner: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {choices}, got {value!r}")


def _check_pos_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


def _check_nonneg_float(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{owner}.{name} must be a non-negative number, got {value!r}")


@dataclass
class BackboneConfig:
    """Which transformers ``AutoBackbone`` to build and which stages to tap.

    ``model_type`` is a transformers model type ("swin", "resnet", "convnext");
    ``kwargs`` are passed to that model's config class (``AutoConfig.for_model``);
    ``out_features`` names the stages whose maps feed the encoder (stride grows
    by 2 per stage).
    """

    model_type: str = "resnet"
    kwargs: dict = field(default_factory=dict)
    out_features: list = field(default_factory=lambda: ["stage2", "stage3", "stage4"])

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_BACKBONES:
            raise ValueError(
                f"backbone.model_type must be one of {SUPPORTED_BACKBONES}, got {self.model_type!r}"
            )
        if not isinstance(self.kwargs, dict):
            raise ValueError(f"backbone.kwargs must be a dict, got {type(self.kwargs).__name__}")
        if "out_features" in self.kwargs or "out_indices" in self.kwargs:
            raise ValueError("backbone.kwargs must not set out_features/out_indices; use backbone.out_features")
        self.out_features = list(self.out_features)
        if not self.out_features or not all(isinstance(s, str) for s in self.out_features):
            raise ValueError(f"backbone.out_features must be a non-empty list of stage names, got {self.out_features!r}")


@dataclass
class TransformerConfig:
    """Deformable encoder/decoder sizes (DINO / Deformable-DETR naming)."""

    d_model: int = 256
    num_heads: int = 8
    dim_feedforward: int = 2048
    num_points: int = 4
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    num_queries: int = 900
    num_extra_levels: int = 1  # stride-2 conv levels appended after the backbone's last map
    dropout: float = 0.0
    # Official-numerics switches (docs/upn.md, "Load the released weights"): the defaults are the from-scratch
    # upn-tiny behaviour, ``upn_large_config`` sets the released UPN's values.
    class_head: str = "projected"  # "projected": <Linear(q), prompt>/sqrt(d) + bias; "dot": <q, prompt>
    share_box_head: bool = False  # one box MLP for every decoder layer (official) or one per layer
    box_refine_input: str = "normed"  # decoder reference update from the "normed" or "raw" layer output
    inverse_sigmoid_eps: float = 1e-5  # clamp of logit(x) in the decoder (official 1e-3)
    mask_invalid_proposals: bool = True  # False: border/padded tokens may be selected (official)
    position_temperature: float = 10000.0  # feature-map sine embedding temperature (official 20)
    position_offset: float = 0.5  # cumsum - offset before normalising positions (official 0)

    def __post_init__(self) -> None:
        for name in ("d_model", "num_heads", "dim_feedforward", "num_points",
                     "num_encoder_layers", "num_decoder_layers", "num_queries"):
            _check_pos_int("transformer", name, getattr(self, name))
        if isinstance(self.num_extra_levels, bool) or not isinstance(self.num_extra_levels, int) \
                or self.num_extra_levels < 0:
            raise ValueError(f"transformer.num_extra_levels must be an int >= 0, got {self.num_extra_levels!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"transformer.d_model ({self.d_model}) must be divisible by transformer.num_heads ({self.num_heads})"
            )
        if self.d_model % 4:
            # The query position embedding splits d_model/2 features over (x, y) twice.
            raise ValueError(f"transformer.d_model must be divisible by 4, got {self.d_model}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"transformer.dropout must be in [0, 1), got {self.dropout!r}")
        _check_choice("transformer", "class_head", self.class_head, CLASS_HEADS)
        _check_choice("transformer", "box_refine_input", self.box_refine_input, BOX_REFINE_INPUTS)
        for name in ("share_box_head", "mask_invalid_proposals"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"transformer.{name} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.inverse_sigmoid_eps, bool) or not isinstance(self.inverse_sigmoid_eps, (int, float)) \
                or not 0.0 < self.inverse_sigmoid_eps < 0.5:
            raise ValueError(f"transformer.inverse_sigmoid_eps must be in (0, 0.5), got {self.inverse_sigmoid_eps!r}")
        if isinstance(self.position_temperature, bool) or not isinstance(self.position_temperature, (int, float)) \
                or not self.position_temperature > 0:
            raise ValueError(f"transformer.position_temperature must be > 0, got {self.position_temperature!r}")
        if isinstance(self.position_offset, bool) or not isinstance(self.position_offset, (int, float)) \
                or not 0.0 <= self.position_offset <= 1.0:
            raise ValueError(f"transformer.position_offset must be in [0, 1], got {self.position_offset!r}")


@dataclass
class LossConfig:
    """Matcher costs and loss weights (DINO defaults)."""

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    cost_class: float = 2.0
    cost_l1: float = 5.0
    cost_giou: float = 2.0
    weight_class: float = 1.0
    weight_l1: float = 5.0
    weight_giou: float = 2.0
    aux_loss: bool = True
    encoder_loss: bool = True

    def __post_init__(self) -> None:
        for name in ("focal_gamma", "cost_class", "cost_l1", "cost_giou",
                     "weight_class", "weight_l1", "weight_giou"):
            _check_nonneg_float("loss", name, getattr(self, name))
        if not (isinstance(self.focal_alpha, (int, float)) and 0.0 <= self.focal_alpha <= 1.0):
            raise ValueError(f"loss.focal_alpha must be in [0, 1], got {self.focal_alpha!r}")
        if self.cost_class + self.cost_l1 + self.cost_giou <= 0:
            raise ValueError("loss.cost_class, loss.cost_l1 and loss.cost_giou cannot all be 0")


@dataclass
class ImageConfig:
    """Inference resize rule, normalisation (RGB, values in [0, 1] before mean/std) and
    how boxes go back to pixels.

    ``size_rounding``: "round" rounds both resized sides; "truncate" is the official
    UPN rule (the capped short side is rounded, the other side truncated, see
    ``upn.image_processing.resized_size``). ``clip_boxes``: clamp pixel boxes to the
    image (the official wrapper does not).
    """

    short_side: int = 800
    max_size: int = 1333
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])
    size_rounding: str = "round"
    clip_boxes: bool = True

    def __post_init__(self) -> None:
        _check_pos_int("image", "short_side", self.short_side)
        _check_pos_int("image", "max_size", self.max_size)
        if self.max_size < self.short_side:
            raise ValueError(f"image.max_size ({self.max_size}) must be >= image.short_side ({self.short_side})")
        self.mean, self.std = list(self.mean), list(self.std)
        if len(self.mean) != 3:
            raise ValueError(f"image.mean must have 3 values, got {self.mean!r}")
        if len(self.std) != 3 or any(not s > 0 for s in self.std):
            raise ValueError(f"image.std must have 3 positive values, got {self.std!r}")
        _check_choice("image", "size_rounding", self.size_rounding, SIZE_ROUNDINGS)
        if not isinstance(self.clip_boxes, bool):
            raise ValueError(f"image.clip_boxes must be a bool, got {self.clip_boxes!r}")


_SUBCONFIGS = {"backbone": BackboneConfig, "transformer": TransformerConfig,
               "loss": LossConfig, "image": ImageConfig}


@dataclass
class UPNConfig:
    """Full UPN configuration. Sub-configs may be given as dicts."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    name: str = "custom"

    def __post_init__(self) -> None:
        for key, cls in _SUBCONFIGS.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, _from_dict(cls, value, key))
            elif not isinstance(value, cls):
                raise ValueError(f"{key} must be a {cls.__name__} or dict, got {type(value).__name__}")

    @property
    def num_feature_levels(self) -> int:
        return len(self.backbone.out_features) + self.transformer.num_extra_levels

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "UPNConfig":
        return _from_dict(cls, data, "config")

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "UPNConfig":
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


def _from_dict(cls, data: dict, owner: str):
    if not isinstance(data, dict):
        raise ValueError(f"{owner} must be a dict, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown field(s) in {owner}: {', '.join(owner + '.' + k for k in unknown)}")
    return cls(**data)
