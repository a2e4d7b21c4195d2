"""The released checkpoints' layout -> this project's model, processor and settings.

    chatrex convert official RexSeek-3B/ rexseek-3b-converted/

A folder in the official layout (RexSeek-3B; ChatRex-7B, whose remote code names its modules
the same way; official_chatrex.md A.10) holds a ``config.json`` that is the LLM's config plus
``mm_*`` fields, the weights (``model.safetensors``, or shards with an index, or ``.bin`` read
with ``weights_only=True``) and the tokenizer with the 104 added tokens. Its key layout:

========================================  ==============================================
official key                              ours
========================================  ==============================================
``model.*`` (the LLM body)                ``model.language_model.*``
``lm_head.weight`` (absent when tied)     ``lm_head.weight``
``vision_tower.vision_tower.vision_model.*``  ``model.vision_low.*`` (``CLIPVisionModel``)
``vision_tower_aux.vision_stem|stages.*`` ``model.vision_high.*`` (timm names with
                                          ``ramma`` for ``gamma``; :mod:`chatrex.convert.convnext_timm`)
``mm_projector.{0,2}.*``                  ``model.mm_projector.{0,2}.*``
``mm_object_projector.{0,2}.*``           ``model.mm_object_projector.{0,2}.*``
========================================  ==============================================

LLaVA-style checkpoints keep the vision modules under ``model.``; those prefixes are accepted
too, since ChatRex-7B's own modeling file is not available to settle it.

Sizes the official config does not state come from the weights: the CLIP tower's depth,
width, patch and input size, the ConvNeXt's depths and widths, the LLM family (Qwen2 has
attention biases, Llama does not). The converted config carries the official numerics
(``roi_aligned=False``, adaptive ROI sampling, the (cy, cx, w, h) box embedding, the ConvNeXt
run without gradients) and the processor the official preprocessing (centre padding with the
truncated CLIP mean colour, the 336-px input taken from the normalised 768-px tensor), task
prompts, answer rules and proposal protocol (fine prompt, score >= 0.3, NMS 0.8, top 100).

The 104 official tokens keep their ids (from 32000 for Vicuna, from 151665 for Qwen2.5) and the
vocabulary stays the official one: our ``<objfeat>`` and ``<image>`` placeholders are added to
the tokenizer after them, with ids past the embedding table (the model overwrites those
positions and never reads their rows).

Unknown keys, missing keys and wrong shapes are a ``ValueError`` that lists them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, CLIPVisionConfig
from transformers.utils import logging as hf_logging

from ..configuration_chatrex import ChatRexConfig
from ..image_processing_chatrex import ChatRexImageProcessor
from ..modeling_chatrex import ChatRexForConditionalGeneration
from ..official.layout import read_config
from ..official.synthetic import OFFICIAL_ADDED_TOKENS
from ..presets import OFFICIAL_NUMERICS
from ..processing_chatrex import ChatRexProcessor
from ..text.chat_template import resolve_chat_template
from ..text.special_tokens import add_special_tokens
from ..utils.devices import DTYPES
from ..utils.strict_loading import KeyReport
from .compose import (
    CLIP_KEYS,
    high_resolution_size,
    map_clip_vision,
    map_convnext,
    read_checkpoint,
    read_folder_weights,
)
from .convnext_timm import hf_to_timm, infer_config
from .rules import KeyRules

# Official key -> ours (module doc), read both ways by chatrex.convert.rules. The towers keep
# their own layouts here (the CLIP folder's ``vision_model.*``, timm's ConvNeXt names), which
# compose.map_clip_vision and convnext_timm map on. The RexSeek nesting comes before the
# LLaVA-style ``model.`` one, so that to_official_state writes RexSeek's.
OFFICIAL_TABLE: list[tuple[str, str]] = [
    ("vision_tower.vision_tower.", "model.vision_low."),
    ("vision_tower_aux.vision_stages.{s}.blocks.{b}.ramma", "model.vision_high.stages.{s}.blocks.{b}.gamma"),  # sic: the official layer-scale name
    ("vision_tower_aux.vision_stem.", "model.vision_high.stem."),
    ("vision_tower_aux.vision_stages.", "model.vision_high.stages."),
    ("mm_projector.{i}.{p}", "model.mm_projector.{i}.{p}"),
    ("mm_object_projector.{i}.{p}", "model.mm_object_projector.{i}.{p}"),
    ("model.vision_tower.vision_tower.", "model.vision_low."),
    ("model.vision_tower_aux.vision_stages.{s}.blocks.{b}.ramma", "model.vision_high.stages.{s}.blocks.{b}.gamma"),
    ("model.vision_tower_aux.vision_stem.", "model.vision_high.stem."),
    ("model.vision_tower_aux.vision_stages.", "model.vision_high.stages."),
    ("model.mm_projector.{i}.{p}", "model.mm_projector.{i}.{p}"),
    ("model.mm_object_projector.{i}.{p}", "model.mm_object_projector.{i}.{p}"),
    ("lm_head.weight", "lm_head.weight"),
    ("model.", "model.language_model."),  # the LLM body: last, it takes every other model.* key
]
OFFICIAL_KEYS = KeyRules(OFFICIAL_TABLE, placeholders={"p": "weight|bias"})
# Our prefix of each part of the renamed state; split_state strips it and map_state restores it.
PART_PREFIXES = {"clip": "model.vision_low.", "convnext": "model.vision_high.", "llm": "model.language_model.",
                 "projectors": "model.mm_", "lm_head": "lm_head."}
HEAD_KEY = "lm_head.weight"

# mm_* fields whose value changes the numerics or the prompt: only the released values load.
REQUIRED_MM_VALUES = {
    "mm_vision_select_feature": ("patch",),
    "mm_projector_type": ("mlp2x_gelu",),
    "mm_patch_merge_type": ("flat",),
    "image_aspect_ratio": ("pad",),
    "mm_use_im_start_end": (False,),
    "mm_use_im_patch_token": (False,),
}
KNOWN_MM_FIELDS = {"mm_vision_tower", "mm_vision_select_layer", "mm_hidden_size", "mm_vision_tower_aux", "mm_projector_lr",
                   "mm_vision_resolution", "mm_vision_tower_lr", *REQUIRED_MM_VALUES}
# config.json fields that describe the vision side or training, not the LLM.
NON_LLM_FIELDS = {
    "architectures", "auto_map", "model_type", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
    "object_hidden_size", "image_aspect_ratio", "tokenizer_model_max_length", "tokenizer_padding_side",
    "vis_during_training_prob", "freeze_mm_mlp_adapter", "tune_mm_mlp_adapter", "use_cache",
}
OFFICIAL_PAD_VALUE = (122, 116, 104)  # int(255 * CLIP mean), truncated as the official code does
OFFICIAL_PROPOSALS = {"prompt_type": "fine", "min_score": 0.3, "nms_iou": 0.8}
DEFAULT_TEMPLATES = {"qwen2": "chatml", "llama": "xtuner_vicuna"}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    known = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
    if any((path / name).is_file() for name in known):
        return read_folder_weights(path)  # a shard the index names but the folder lacks is an error here
    singles = sorted(path.glob("*.safetensors"))
    if len(singles) == 1:
        return read_checkpoint(singles[0])
    raise ValueError(f"{path} has no model.safetensors, pytorch_model.bin or an index of shards")


def split_state(state: dict) -> dict[str, dict]:
    """Official tensors by part (:data:`PART_PREFIXES`, prefix stripped): ``clip`` (CLIP folder
    names), ``convnext`` (timm names), ``projectors``, ``llm`` (names inside the LLM body) and
    ``lm_head``. Raises ``ValueError`` listing keys that belong to no part."""
    renamed, unmapped = OFFICIAL_KEYS.rename(state)
    parts: dict[str, dict] = {part: {} for part in PART_PREFIXES}
    for key, new in renamed.items():
        part = next(p for p, prefix in PART_PREFIXES.items() if new.startswith(prefix))
        parts[part][new[len(PART_PREFIXES[part]):]] = state[key]
    empty = [f"no {part} weights found (expected keys like {example})" for part, example in _EXAMPLES.items() if not parts[part]]
    KeyReport("official checkpoint", unmapped=unmapped, problems=empty).raise_if_any()
    return parts


_EXAMPLES = {
    "clip": "vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight",
    "convnext": "vision_tower_aux.vision_stem.0.weight",
    "projectors": "mm_projector.0.weight",
    "llm": "model.embed_tokens.weight",
}


def clip_config_from_weights(clip: dict, hub_id: str | None) -> CLIPVisionConfig:
    """The CLIP vision config implied by the tensors (depth, width, MLP, patch, input size).
    Both released models use OpenAI CLIP-L/14-336 (quick-GELU, heads of 64 channels)."""
    try:
        patch = clip["vision_model.embeddings.patch_embedding.weight"]
        positions = int(clip["vision_model.embeddings.position_embedding.weight"].shape[0])
        fc1 = clip["vision_model.encoder.layers.0.mlp.fc1.weight"]
    except KeyError as err:
        raise ValueError(f"official checkpoint: CLIP tower lacks vision_tower.vision_tower.{err.args[0]}") from None
    layers = {int(m.group(1)) for k in clip if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))}
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1:
        raise ValueError(f"official checkpoint: CLIP position embedding has {positions} rows, not 1 + a square grid")
    hidden = int(patch.shape[0])
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=int(fc1.shape[0]), num_hidden_layers=len(layers), num_attention_heads=hidden // 64,
        patch_size=int(patch.shape[-1]), image_size=grid * int(patch.shape[-1]), hidden_act="quick_gelu", layer_norm_eps=1e-5,
        projection_dim=768, **({"_name_or_path": hub_id} if hub_id else {}),
    )


def text_config_from_official(official: dict, llm: dict):
    """The LLM's config: the official config.json without the vision fields, as Qwen2 (the
    attention projections have biases) or Llama (they do not; Vicuna)."""
    family = "qwen2" if any(k.endswith("self_attn.q_proj.bias") for k in llm) else "llama"
    fields = {k: v for k, v in official.items() if k not in NON_LLM_FIELDS and not k.startswith("mm_")}
    # transformers 4.x wrote rope_theta / rope_scaling; 5.x reads one rope_parameters dict.
    theta, scaling = fields.pop("rope_theta", None), fields.pop("rope_scaling", None)
    if theta is not None or scaling:
        params = dict(scaling or {"rope_type": "default"})
        if "type" in params and "rope_type" not in params:
            params["rope_type"] = params.pop("type")
        fields["rope_parameters"] = {**params, **({"rope_theta": theta} if theta is not None else {})}
    config = AutoConfig.for_model(family, **fields)
    rows = int(llm["embed_tokens.weight"].shape[0])
    if int(config.vocab_size) != rows:
        raise ValueError(f"official config says vocab_size {config.vocab_size} but model.embed_tokens.weight has {rows} rows")
    return config


def check_official_fields(official: dict) -> None:
    """Refuse settings the released models do not use (they would change the numerics or the
    prompt); warn about unknown ``mm_*`` fields, which are ignored."""
    bad = [f"{k}={official[k]!r} (supported: {', '.join(map(repr, ok))})" for k, ok in REQUIRED_MM_VALUES.items() if k in official and official[k] not in ok]
    if bad:
        raise ValueError("official config: unsupported setting(s) " + "; ".join(bad))
    unknown = sorted(k for k in official if k.startswith("mm_") and k not in KNOWN_MM_FIELDS)
    if unknown:
        warnings.warn(f"official config: ignoring unknown field(s) {', '.join(unknown)}", stacklevel=3)


def official_config(official: dict, parts: dict) -> ChatRexConfig:
    """Our config for an official checkpoint, with the official numerics."""
    check_official_fields(official)
    low = clip_config_from_weights(parts["clip"], official.get("mm_vision_tower"))
    text = text_config_from_official(official, parts["llm"])
    high_config = infer_config(parts["convnext"])  # sizes only; map_state maps and checks the tensors
    high_config.image_size = high_resolution_size(low, high_config)
    tied = bool(official.get("tie_word_embeddings", not parts["lm_head"]))
    if not tied and not parts["lm_head"]:
        KeyReport("official checkpoint (the config says the embeddings are not tied)", missing=[HEAD_KEY]).raise_if_any()
    text.tie_word_embeddings = tied
    hidden = official.get("mm_hidden_size")
    if hidden is not None and int(hidden) != int(low.hidden_size) + int(high_config.hidden_sizes[-1]):
        raise ValueError(f"official config: mm_hidden_size={hidden} but the towers give {low.hidden_size} + {high_config.hidden_sizes[-1]}")
    return ChatRexConfig(
        vision_low_config=low,
        vision_high_config=high_config,
        text_config=text,
        tie_word_embeddings=tied,
        **{**OFFICIAL_NUMERICS, "vision_low_feature_layer": int(official.get("mm_vision_select_layer", -2))},
    )


def map_state(parts: dict, config: ChatRexConfig) -> dict[str, torch.Tensor]:
    """Our state dict from the official parts; raises ``ValueError`` listing missing, extra or
    mis-shaped keys against the model ``config`` builds."""
    clip, _ = map_clip_vision(parts["clip"], config.vision_low_config)
    _, convnext, _ = map_convnext(parts["convnext"])
    mapped = {**parts, "clip": clip, "convnext": convnext}
    state = {PART_PREFIXES[part] + key: value for part, tensors in mapped.items() for key, value in tensors.items()}
    with torch.device("meta"):
        expected = ChatRexForConditionalGeneration(config).state_dict()
    if config.tie_word_embeddings:
        expected.pop(HEAD_KEY, None)
        state.pop(HEAD_KEY, None)
    KeyReport.against("official checkpoint", state, expected).raise_if_any()
    return state


def to_official_state(state: dict) -> dict[str, torch.Tensor]:
    """The inverse of :func:`map_state`: our state dict -> official key names (RexSeek's
    nesting). Used to write official-layout folders of small random models for tests."""
    low, high = PART_PREFIXES["clip"], PART_PREFIXES["convnext"]
    # First back to the towers' own layouts (the CLIP folder's, timm's), as split_state gives them.
    ours = {_clip_folder_name(k, low): v for k, v in state.items() if not k.startswith(high)}
    tower = {k[len(high):]: v for k, v in state.items() if k.startswith(high)}
    ours.update({high + k: v for k, v in hf_to_timm(_without_head_norm(tower)).items()})
    renamed, unmapped = OFFICIAL_KEYS.rename(ours, inverse=True)
    KeyReport("state dict -> official layout", unmapped=unmapped).raise_if_any()
    return {renamed[k]: v for k, v in ours.items()}


def _clip_folder_name(key: str, low: str) -> str:
    """``low + CLIPVisionModel key`` -> ``low + CLIP folder key``; other keys unchanged."""
    return low + CLIP_KEYS.inverse(key[len(low):]) if key.startswith(low) else key


def _without_head_norm(tower: dict) -> dict:
    """The official ConvNeXt has no pooled-output norm (``ConvNextModel.layernorm``, which
    timm_to_hf starts at the identity when converting it)."""
    return {k: v for k, v in tower.items() if not k.startswith("layernorm.")}


def official_tokenizer(path: str | os.PathLike, vocab_size: int, chat_template: str):
    """The folder's tokenizer with the official 104 tokens at their official ids, then our two
    placeholders after them. Raises ``ValueError`` when the official tokens are out of order or
    do not fit the vocabulary."""
    # AutoTokenizer also reads config.json, whose model_type (rexseek_qwen) and 4.x rope fields
    # it warns about; they concern the model, which text_config_from_official reads itself.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            tokenizer = AutoTokenizer.from_pretrained(path)
    finally:
        hf_logging.set_verbosity(verbosity)
    vocab = tokenizer.get_vocab()
    missing = [t for t in OFFICIAL_ADDED_TOKENS if t not in vocab]
    if missing:
        # The official loader adds them the same way when a tokenizer lacks them.
        tokenizer.add_tokens(missing, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(OFFICIAL_ADDED_TOKENS)
    first = ids[0]
    if ids != list(range(first, first + len(ids))) or ids[-1] >= vocab_size:
        raise ValueError(f"{path}: the official tokens must have consecutive ids below the vocabulary size {vocab_size}; "
                         f"<obj0>={ids[0]}, </objects>={ids[-1]}")
    add_special_tokens(tokenizer)  # <objfeat>, <image>: past the official ids
    tokenizer.chat_template = resolve_chat_template(chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_official(path: str | os.PathLike, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
                  chat_template: str | None = None) -> tuple[ChatRexForConditionalGeneration, ChatRexProcessor]:
    """Convert an official folder in memory: ``(model, processor)``, the model in eval mode on
    ``device`` in ``dtype`` (default: the stored dtype). ``chat_template``: a name from
    :data:`chatrex.text.chat_template.CHAT_TEMPLATES` or a ``.jinja`` file; default ChatML for
    Qwen (RexSeek's format) and ``xtuner_vicuna`` for Llama/Vicuna (docs/released_weights.md)."""
    path = Path(path)
    official = read_config(path)
    if not official:
        raise ValueError(f"{path} has no config.json")
    parts = split_state(_weights(path))
    config = official_config(official, parts)
    state = map_state(parts, config)
    family = config.text_config.model_type
    tokenizer = official_tokenizer(path, int(config.text_config.vocab_size), chat_template or DEFAULT_TEMPLATES.get(family, "chatml"))
    ids = tokenizer.convert_tokens_to_ids
    config.image_token_id, config.objfeat_token_id = ids("<image>"), ids("<objfeat>")
    config.object_token_ids = ids(OFFICIAL_ADDED_TOKENS[:100])
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    stored = parts["llm"]["embed_tokens.weight"].dtype  # the LLM's dtype (the vision side may be kept in fp32)
    model = ChatRexForConditionalGeneration.from_pretrained(None, config=config, state_dict=state, dtype=dtype or stored)
    model.to(torch.device(device)).eval()
    image_processor = ChatRexImageProcessor(
        low_size=config.low_image_size, high_size=config.high_image_size, max_objects=config.max_objects,
        pad_value=OFFICIAL_PAD_VALUE, pad_mode="center", low_from_high=True,
    )
    processor = ChatRexProcessor(tokenizer, image_processor, config.num_image_tokens, prompt_style="official", proposals=OFFICIAL_PROPOSALS)
    return model, processor


def convert_official(src: str | os.PathLike, out: str | os.PathLike, dtype: str = "auto", chat_template: str | None = None) -> dict:
    """Convert the official folder ``src`` into a folder at ``out`` that every loader of this
    project reads (``ChatRexPredictor``, ``chatrex detect --model``, ``train.chatrex``).
    Returns a summary dict (also written to ``out/convert_info.json``)."""
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    model, processor = load_official(src, dtype=None if dtype == "auto" else dtype, chat_template=chat_template)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    cfg = model.config
    info = {
        "source": str(src),
        "llm": cfg.text_config.model_type,
        "vocab_size": int(cfg.text_config.vocab_size),
        "obj0_id": cfg.object_token_ids[0],
        "clip_layers": int(cfg.vision_low_config.num_hidden_layers),
        "convnext_depths": list(cfg.vision_high_config.depths),
        "dtype": str(model.dtype).replace("torch.", ""),
        "chat_template": chat_template or DEFAULT_TEMPLATES.get(cfg.text_config.model_type, "chatml"),
    }
    Path(out, "convert_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def run(args: argparse.Namespace) -> int:
    """``chatrex convert official`` (arguments: ``chatrex.cli.convert._official_arguments``)."""
    info = convert_official(args.src, args.dst, dtype=args.dtype, chat_template=args.chat_template)
    print(f"wrote {args.dst}: {info['llm']} LLM, vocab {info['vocab_size']} (<obj0> = {info['obj0_id']}), CLIP {info['clip_layers']} layers, "
          f"ConvNeXt depths {info['convnext_depths']}, {info['dtype']}, chat template {info['chat_template']}")
    return 0
