"""ConvNeXt weights between timm/open_clip and transformers' ``ConvNextModel`` (both ways).

The high-resolution tower of ChatRex is transformers' ``ConvNextModel``
(``configuration_chatrex`` explains why). The LAION CLIP-ConvNeXt weights are published for
open_clip, whose image tower is a timm ConvNeXt under ``visual.trunk.``; timm checkpoints use
the same names without the prefix. The two implementations compute the same function (patchify
stem + LayerNorm2d, stages of LayerNorm2d + 2x2 stride-2 downsampling then blocks of 7x7
depthwise conv, channels-last LayerNorm, Linear 4x MLP with exact GELU, layer scale); only the
parameter names differ. :data:`KEY_TABLE` below is the whole mapping and the documentation of
the layout; :mod:`chatrex.convert.rules` reads it both ways.

Named special cases:

* ``head.norm`` (timm's pre-classifier LayerNorm, applied after global average pooling) is
  ``ConvNextModel.layernorm``, which transformers applies to the pooled output in the same
  order. ChatRex reads stage outputs, not the pooled one; when a checkpoint has no
  ``head.norm`` (e.g. ``head_norm_first`` variants) the pooled-output norm starts at the
  identity (weight 1, bias 0) instead of at random, and the converter says so.
* ``conv_mlp`` ConvNeXts (timm's ``convnext_atto``..``convnext_nano``) store the block MLP as
  1x1 convolutions, ``mlp.fc1.weight`` (4C, C, 1, 1); a 1x1 convolution is the same map as
  ``Linear`` (4C, C), so the weight is reshaped (and reshaped back by :func:`hf_to_timm`
  with ``conv_mlp=True``).
* Ignored by prefix (:data:`IGNORED_TIMM`, :data:`IGNORED_OPEN_CLIP`): the classifier
  (``head.fc``, ``head.pre_logits``), ``norm_pre`` (applied after the last stage, before the
  head; ChatRex reads stage outputs), open_clip's projection head ``visual.head.`` and its
  text tower. Everything else must map, or :func:`timm_to_hf` raises listing the keys.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch
from transformers import ConvNextConfig

from ..utils.strict_loading import KeyReport
from .rules import KeyRules

OPEN_CLIP_PREFIX = "visual.trunk."

# Ordered table: timm name <-> transformers ConvNextModel name. Placeholders: {s} stage,
# {b} block (integers), {p} weight|bias.
KEY_TABLE: list[tuple[str, str]] = [
    ("stem.0.{p}", "embeddings.patch_embeddings.{p}"),  # Conv2d(3, C0, k=4, s=4)
    ("stem.1.{p}", "embeddings.layernorm.{p}"),  # LayerNorm2d(C0)
    ("stages.{s}.downsample.0.{p}", "encoder.stages.{s}.downsampling_layer.0.{p}"),  # LayerNorm2d(C_in)
    ("stages.{s}.downsample.1.{p}", "encoder.stages.{s}.downsampling_layer.1.{p}"),  # Conv2d(C_in, C, k=2, s=2)
    ("stages.{s}.blocks.{b}.conv_dw.{p}", "encoder.stages.{s}.layers.{b}.dwconv.{p}"),  # Conv2d(C, C, 7, groups=C)
    ("stages.{s}.blocks.{b}.norm.{p}", "encoder.stages.{s}.layers.{b}.layernorm.{p}"),  # LayerNorm(C), channels last
    ("stages.{s}.blocks.{b}.mlp.fc1.{p}", "encoder.stages.{s}.layers.{b}.pwconv1.{p}"),  # Linear(C, 4C)
    ("stages.{s}.blocks.{b}.mlp.fc2.{p}", "encoder.stages.{s}.layers.{b}.pwconv2.{p}"),  # Linear(4C, C)
    ("stages.{s}.blocks.{b}.gamma", "encoder.stages.{s}.layers.{b}.layer_scale_parameter"),  # (C,)
    ("head.norm.{p}", "layernorm.{p}"),  # special case: the pooled-output LayerNorm (see module doc)
]

# Prefixes of a timm ConvNeXt state dict that are not part of the image tower ChatRex uses.
IGNORED_TIMM = ("head.fc.", "head.pre_logits.", "norm_pre.")
# Prefixes of an open_clip CLIP state dict outside ``visual.trunk.``: the image projection
# head and the text tower (transformer, embeddings, final norm, projection, temperature).
IGNORED_OPEN_CLIP = (
    "visual.head.", "transformer.", "token_embedding.", "positional_embedding", "ln_final.",
    "text_projection", "logit_scale", "logit_bias", "text.", "attn_mask",
)

CONVNEXT_KEYS = KeyRules(KEY_TABLE, placeholders={"p": "weight|bias"})


def split_layout(state_dict: dict) -> tuple[str, dict, list[str]]:
    """Detect the layout and strip its prefix.

    Returns ``(layout, trunk, ignored)``: ``layout`` is ``"open_clip"`` (keys under
    ``visual.trunk.``) or ``"timm"``; ``trunk`` holds the timm-named ConvNeXt tensors; ``ignored``
    lists the keys skipped on purpose. Raises ``ValueError`` listing keys of neither.
    """
    if any(k.startswith(OPEN_CLIP_PREFIX) for k in state_dict):
        layout, ignored_prefixes = "open_clip", IGNORED_OPEN_CLIP
        trunk = {k[len(OPEN_CLIP_PREFIX):]: v for k, v in state_dict.items() if k.startswith(OPEN_CLIP_PREFIX)}
        outside = [k for k in state_dict if not k.startswith(OPEN_CLIP_PREFIX)]
    else:
        layout, ignored_prefixes, trunk, outside = "timm", (), dict(state_dict), []
    ignored = [k for k in outside if k.startswith(ignored_prefixes)]
    KeyReport(f"{layout} ConvNeXt checkpoint (outside {OPEN_CLIP_PREFIX})", unmapped=sorted(set(outside) - set(ignored))).raise_if_any()
    dropped = [k for k in trunk if k.startswith(IGNORED_TIMM)]
    ignored += [(OPEN_CLIP_PREFIX if layout == "open_clip" else "") + k for k in dropped]
    for k in dropped:
        del trunk[k]
    return layout, trunk, sorted(ignored)


def _as_linear(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, 1, 1) 1x1-conv weight -> (out, in) Linear weight; other shapes unchanged."""
    return weight.flatten(1) if weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1) else weight


def infer_config(trunk: dict, image_size: int = 224) -> ConvNextConfig:
    """A ``ConvNextConfig`` with the depths and widths of timm-named ConvNeXt tensors (only
    shapes are read, so meta tensors work). Raises ``ValueError`` for a ConvNeXt variant that
    ``ConvNextModel`` cannot express (kernel other than 7, MLP ratio other than 4, 1x1-conv MLP)."""
    if "stem.0.weight" not in trunk:
        raise ValueError("not a ConvNeXt checkpoint: no stem.0.weight (patchify stem) among its keys")
    blocks: dict[int, set[int]] = defaultdict(set)
    for key in trunk:
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            blocks[int(m.group(1))].add(int(m.group(2)))
    stages = sorted(blocks)
    if not stages or stages != list(range(len(stages))) or any(sorted(b) != list(range(len(b))) for b in blocks.values()):
        raise ValueError(f"ConvNeXt stages/blocks are not numbered 0..n-1: {dict(sorted((s, sorted(b)) for s, b in blocks.items()))}")
    widths = [int(trunk[f"stages.{s}.blocks.0.conv_dw.weight"].shape[0]) for s in stages]
    for s, c in enumerate(widths):
        dw, fc1 = trunk[f"stages.{s}.blocks.0.conv_dw.weight"], _as_linear(trunk[f"stages.{s}.blocks.0.mlp.fc1.weight"])
        if tuple(dw.shape[1:]) != (1, 7, 7):
            raise ValueError(f"stage {s}: depthwise kernel {tuple(dw.shape)} is not (C, 1, 7, 7), which ConvNextModel fixes")
        if tuple(fc1.shape) != (4 * c, c):
            raise ValueError(f"stage {s}: mlp.fc1 has shape {tuple(fc1.shape)}, ConvNextModel needs Linear(C, 4C) = {(4 * c, c)}")
    stem = trunk["stem.0.weight"]
    has_scale = "stages.0.blocks.0.gamma" in trunk
    return ConvNextConfig(
        num_channels=int(stem.shape[1]),
        patch_size=int(stem.shape[-1]),
        hidden_sizes=widths,
        depths=[len(blocks[s]) for s in stages],
        # timm's value; only matters for a freshly built model (loaded weights replace it).
        layer_scale_init_value=1e-6 if has_scale else 0.0,
        layer_norm_eps=1e-6,  # timm's head norm (ConvNextModel.layernorm) eps
        image_size=image_size,
    )


def timm_to_hf(state_dict: dict) -> tuple[ConvNextConfig, dict, list[str]]:
    """Convert an open_clip or timm ConvNeXt state dict for ``ConvNextModel``.

    Args:
        state_dict: ``{name: tensor}`` in either layout (tensors may be on the meta device).

    Returns:
        ``(config, hf_state_dict, ignored)``; ``config.image_size`` is 224 until the caller sets
        the input size. ``ignored`` lists the source keys skipped on purpose (documented
        prefixes). Raises ``ValueError`` listing any key that maps nowhere.
    """
    _, trunk, ignored = split_layout(state_dict)
    config = infer_config(trunk)
    renamed, unmatched = CONVNEXT_KEYS.rename(trunk)
    KeyReport("ConvNeXt checkpoint", unmapped=unmatched).raise_if_any()
    # Special case (module doc): conv_mlp checkpoints hold the MLP as 1x1 convolutions.
    hf = {renamed[k]: _as_linear(v) if ".mlp.fc" in k else v for k, v in trunk.items()}
    if "layernorm.weight" not in hf:
        # Special case (module doc): the pooled-output norm, unused by ChatRex, starts at identity.
        last = config.hidden_sizes[-1]
        like = hf["embeddings.patch_embeddings.weight"]
        hf["layernorm.weight"] = torch.ones(last, dtype=like.dtype, device=like.device)
        hf["layernorm.bias"] = torch.zeros(last, dtype=like.dtype, device=like.device)
        ignored.append("(no head.norm: ConvNextModel.layernorm set to identity)")
    return config, hf, ignored


def hf_to_timm(state_dict: dict, prefix: str = "", conv_mlp: bool = False) -> dict:
    """The inverse of :func:`timm_to_hf`: ``ConvNextModel`` names to timm names, each under
    ``prefix`` (``""`` for timm, :data:`OPEN_CLIP_PREFIX` for open_clip's image trunk).
    ``conv_mlp=True`` writes the block MLP as 1x1-conv weights (4C, C, 1, 1)."""
    renamed, unmatched = CONVNEXT_KEYS.rename(state_dict, inverse=True)
    KeyReport("ConvNextModel state dict", unmapped=unmatched).raise_if_any()
    out = {}
    for key, value in state_dict.items():
        name = renamed[key]
        if conv_mlp and ".mlp.fc" in name and name.endswith(".weight"):
            value = value[:, :, None, None]
        out[prefix + name] = value
    return out
