"""``ChatRexConfig``: one nested, validated config for the whole model.

Modelled on transformers' ``LlavaConfig``: three sub-configs plus the object-encoder fields.

Design choice for the high-resolution encoder: it is a transformers ``ConvNextConfig`` /
``ConvNextModel`` rather than a timm model name. A transformers config nests, serialises and
validates like the other two sub-configs, so ``save_pretrained``/``from_pretrained`` round-trip
the whole model with no extra dependency and no name-based code paths. The LAION CLIP-ConvNeXt
weights (published for timm/open_clip) have the same stage structure; loading them is a key
renaming job for a converter, not a different architecture.
"""

from __future__ import annotations

import math

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .layers.token_compression import METHODS as COMPRESSION_METHODS
from .text.special_tokens import MAX_OBJECTS

PROJECTOR_TYPES = ("mlp2x_gelu", "linear")
BOX_EMBED_ORDERS = ("cxcywh", "cycxwh")


class ChatRexConfig(PreTrainedConfig):
    """Configuration of :class:`~chatrex.ChatRexForConditionalGeneration`.

    Args:
        vision_low_config: CLIP vision config (low-resolution encoder, e.g. ViT-L/14 at 336 px).
        vision_high_config: ConvNeXt config (high-resolution encoder, e.g. ConvNeXt-L at 768 px).
            Its ``image_size`` is the high-resolution input side.
        text_config: any causal-LM config (``qwen2`` by default; ``llama`` works too).
        vision_low_feature_layer: which CLIP hidden state to use (-2 = penultimate layer).
        object_feature_levels: ConvNeXt stages (0-based) that the object encoder pools from.
        roi_output_size: ROI-align output side (7 -> 7x7 before mean pooling).
        roi_sampling_ratio: ROI-align sampling points per bin side (``torchvision.ops.roi_align``;
            0 or -1: adaptive, ``ceil(box side / output side)``, the released models' setting).
        roi_aligned: ``roi_align(aligned=...)``. True shifts box coordinates by half a pixel so
            that they match ``F.interpolate(align_corners=False)``; the released models use False.
        pos_embed_temperature, pos_embed_scale: sine-cosine box position embedding parameters.
        box_embed_order: order of the four coordinate embeddings, ``"cxcywh"`` or ``"cycxwh"``
            (the released models concatenate y before x).
        vision_high_no_grad: run the high-resolution tower without gradients (it stays frozen
            in training, as in the released models, and saves its activations' memory).
        max_objects: the largest number of boxes a prompt may hold (``<obj0>``..``<obj99>``).
        projector_type: ``"mlp2x_gelu"`` (Linear, GELU, Linear) or ``"linear"``.
        token_compression: ``None`` (no compression), ``"avgpool2x2"``, ``"unshuffle_mlp"`` or
            ``"tome"``: compress the fused visual tokens before the projector
            (:mod:`chatrex.layers.token_compression`). Object tokens are never compressed.
        token_compression_keep: tokens kept by ``"tome"``.
        object_index_embedding: add the input embedding of ``<objK>`` to the K-th object
            feature. The slot then carries its own index, so retrieving a box (and reading the
            box a question names) is one attention hop instead of an induction circuit; small
            LLMs trained from scratch need it. Off for the full-size preset (released weights).
        object_pointer_head: score ``<objK>`` by matching the position's hidden state against box
            K's slot (:mod:`chatrex.layers.object_pointer`) instead of by an LM-head row; indices the
            image does not have can never be produced. Needs ``object_token_ids``.
        object_reference_features: add box K's feature to every ``<objK>`` token in the text
            (questions naming a box, indices already answered).
        object_token_ids: ids of ``<obj0>``..``<obj99>``, set when the tokens are added.
        image_token_id, objfeat_token_id: placeholder ids, set when the tokens are added.
    """

    model_type = "chatrex"

    sub_configs_defaults = {
        "vision_low_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "patch_size": 14,
                "image_size": 336,
                "projection_dim": 768,
            },
        ),
        "vision_high_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="convnext",
            init_kwargs={"hidden_sizes": [192, 384, 768, 1536], "depths": [3, 3, 27, 3], "image_size": 768},
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    vision_low_config: dict | PreTrainedConfig | None = None
    vision_high_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vision_low_feature_layer: int = -2
    object_feature_levels: list[int] | tuple[int, ...] = (0, 1, 2, 3)
    roi_output_size: int = 7
    roi_sampling_ratio: int = 2
    roi_aligned: bool = True
    pos_embed_temperature: float = 10000.0
    pos_embed_scale: float = 2 * math.pi
    box_embed_order: str = "cxcywh"
    vision_high_no_grad: bool = False
    max_objects: int = MAX_OBJECTS
    projector_type: str = "mlp2x_gelu"
    token_compression: str | None = None
    token_compression_keep: int | None = None
    object_index_embedding: bool = False
    object_pointer_head: bool = False
    object_reference_features: bool = False
    object_token_ids: list[int] | None = None
    image_token_id: int | None = None
    objfeat_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.object_feature_levels = [int(x) for x in self.object_feature_levels]
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self._check()

    # -- derived sizes -------------------------------------------------------------------
    @property
    def low_image_size(self) -> int:
        return int(self.vision_low_config.image_size)

    @property
    def high_image_size(self) -> int:
        return int(self.vision_high_config.image_size)

    @property
    def vision_grid(self) -> int:
        """Side of the shared visual-token grid (24 for the full-size model)."""
        return self.low_image_size // int(self.vision_low_config.patch_size)

    @property
    def num_image_tokens(self) -> int:
        """Visual tokens per image in the prompt (after compression, if any)."""
        n = self.vision_grid**2
        if self.token_compression in ("avgpool2x2", "unshuffle_mlp"):
            return (self.vision_grid // 2) ** 2
        if self.token_compression == "tome":
            return min(int(self.token_compression_keep), n)
        return n

    @property
    def high_stride(self) -> int:
        """Total stride of the last ConvNeXt stage (patchify stem, then 2x per later stage)."""
        return int(self.vision_high_config.patch_size) * 2 ** (len(self.vision_high_config.hidden_sizes) - 1)

    @property
    def object_feature_dim(self) -> int:
        return sum(self.vision_high_config.hidden_sizes[i] for i in self.object_feature_levels)

    @property
    def image_feature_dim(self) -> int:
        return int(self.vision_low_config.hidden_size) + int(self.vision_high_config.hidden_sizes[-1])

    # -- validation ----------------------------------------------------------------------
    def _check(self) -> None:
        low, high = self.vision_low_config, self.vision_high_config
        num_layers = int(low.num_hidden_layers)
        if not -num_layers <= self.vision_low_feature_layer <= num_layers:
            raise ValueError(
                f"vision_low_feature_layer={self.vision_low_feature_layer} is outside the "
                f"{num_layers}-layer CLIP encoder"
            )
        if self.low_image_size % int(low.patch_size):
            raise ValueError(
                f"vision_low_config.image_size={self.low_image_size} is not a multiple of patch_size={low.patch_size}"
            )
        if self.high_image_size % self.high_stride:
            raise ValueError(
                f"vision_high_config.image_size={self.high_image_size} is not a multiple of the ConvNeXt stride {self.high_stride}"
            )
        high_grid = self.high_image_size // self.high_stride
        if high_grid != self.vision_grid:
            raise ValueError(
                "vision_high_config.image_size and vision_low_config.image_size must give the same token grid: "
                f"low {self.low_image_size}/{low.patch_size}={self.vision_grid}, "
                f"high {self.high_image_size}/{self.high_stride}={high_grid}"
            )
        num_stages = len(high.hidden_sizes)
        levels = self.object_feature_levels
        if not levels or len(set(levels)) != len(levels) or any(not 0 <= i < num_stages for i in levels):
            raise ValueError(f"object_feature_levels={levels} must be distinct stage indices in [0, {num_stages})")
        if self.object_feature_dim % 8:
            # 4 coordinates, each with interleaved sin/cos halves.
            raise ValueError(
                f"object feature dim {self.object_feature_dim} (sum of hidden_sizes at object_feature_levels) "
                "must be divisible by 8 for the (cx, cy, w, h) sine-cosine embedding"
            )
        if self.roi_output_size < 1:
            raise ValueError(f"roi_output_size must be >= 1, got {self.roi_output_size}")
        if self.roi_sampling_ratio < -1:
            raise ValueError(f"roi_sampling_ratio must be >= -1 (<= 0 means adaptive), got {self.roi_sampling_ratio}")
        if self.box_embed_order not in BOX_EMBED_ORDERS:
            raise ValueError(f"box_embed_order={self.box_embed_order!r} is not one of {BOX_EMBED_ORDERS}")
        if self.pos_embed_temperature <= 0:
            raise ValueError(f"pos_embed_temperature must be > 0, got {self.pos_embed_temperature}")
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects must be in [1, {MAX_OBJECTS}], got {self.max_objects}")
        if self.token_compression is not None and self.token_compression not in COMPRESSION_METHODS:
            raise ValueError(f"token_compression={self.token_compression!r} is not None or one of {COMPRESSION_METHODS}")
        if self.token_compression in ("avgpool2x2", "unshuffle_mlp") and self.vision_grid % 2:
            raise ValueError(f"token_compression={self.token_compression!r} needs an even token grid, got {self.vision_grid}")
        if self.token_compression == "tome" and not (isinstance(self.token_compression_keep, int) and 1 <= self.token_compression_keep <= self.vision_grid**2):
            raise ValueError(f"token_compression_keep={self.token_compression_keep!r} must be an int in [1, {self.vision_grid ** 2}] for 'tome'")
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type={self.projector_type!r} is not one of {PROJECTOR_TYPES}")


# AutoConfig.from_pretrained(dir) resolves a saved ChatRex config by its model_type once this
# module is imported (the model classes register in modeling_chatrex).
AutoConfig.register("chatrex", ChatRexConfig, exist_ok=True)
