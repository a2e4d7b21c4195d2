"""``chatrex convert compose``: build the stage-1 starting point from pretrained parts.

    chatrex convert compose --clip clip-vit-large-patch14-336/ \\
        --convnext CLIP-convnext_large_d.laion2B-s26B-b102K-augreg/open_clip_model.safetensors \\
        --llm Qwen2.5-7B/ --out chatrex-7b-init/

The parts (docs/architecture.md):

* ``--clip``: a transformers CLIP folder, a full ``CLIPModel`` or a ``CLIPVisionModel``. The
  low-resolution tower is its vision model; :data:`CLIP_TABLE` maps the keys and
  :data:`CLIP_IGNORED` lists what is skipped (text tower, projections, temperature).
* ``--convnext``: a ConvNeXt checkpoint in the open_clip (``visual.trunk.*``) or timm layout,
  ``.safetensors`` or ``.bin`` (read with ``weights_only=True``). Depths and widths come from
  the weights; :mod:`chatrex.convert.convnext_timm` holds the key table.
* ``--llm``: any transformers causal-LM folder with its tokenizer (or ``--tokenizer``).

The high-resolution input side is chosen so that both towers end on the same token grid
(CLIP-L/14 at 336 px -> 24x24, ConvNeXt stride 32 -> 768 px). The ChatRex special tokens are
added and the vocabulary becomes exactly ``len(tokenizer)``, as the official code does (Qwen's
padded embedding rows beyond the tokenizer are dropped); new input and output rows start at
the mean of the pre-existing token rows. The projectors start fresh. Anything that cannot be
mapped is a ``ValueError`` listing the keys; keys skipped on purpose are listed in
``compose_info.json`` in the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel

from ..configuration_chatrex import ChatRexConfig
from ..modeling_chatrex import ChatRexForConditionalGeneration, ChatRexModel
from ..processing_chatrex import ChatRexProcessor
from ..text.special_tokens import add_special_tokens
from ..utils.devices import DTYPES
from ..utils.strict_loading import KeyReport, check_loading_info
from .convnext_timm import timm_to_hf
from .rules import KeyRules

INFO_NAME = "compose_info.json"

# CLIP folder key -> CLIPVisionModel key (transformers 5 saves CLIPVisionModel without the
# ``vision_model.`` prefix; CLIPModel and older CLIPVisionModel folders have it).
CLIP_TABLE: list[tuple[str, str]] = [
    ("vision_model.", ""),
    ("embeddings.", "embeddings."),
    ("pre_layrnorm.", "pre_layrnorm."),  # sic: transformers' name
    ("encoder.", "encoder."),
    ("post_layernorm.", "post_layernorm."),
]
CLIP_KEYS = KeyRules(CLIP_TABLE)
# Parts of a CLIPModel folder outside the vision tower: the text tower, both projections to
# the joint embedding (ChatRex reads hidden state -2, before them) and the temperature.
CLIP_IGNORED = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")


# -- reading checkpoints ------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` from a ``.safetensors`` or ``.bin``/``.pt``/``.pth`` file; pickles
    load with ``weights_only=True`` (memory-mapped where the file format allows)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in (".bin", ".pt", ".pth"):
        raise ValueError(f"{path}: expected a .safetensors or .bin checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        # Only files in torch's legacy (pre-1.6) format cannot be memory-mapped.
        if "mmap" not in str(err):
            raise
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors")
    return state


def read_folder_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a transformers folder (single file or sharded, safetensors or bin)."""
    folder = Path(folder)
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return read_checkpoint(folder / single)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_checkpoint(folder / shard))
            return state
    raise ValueError(f"{folder} has no model.safetensors, pytorch_model.bin or a sharded index of either")


# -- the parts ----------------------------------------------------------------------------
def clip_vision_config(folder: str | os.PathLike) -> CLIPVisionConfig:
    """The vision config of a ``CLIPModel`` or ``CLIPVisionModel`` folder."""
    config = AutoConfig.from_pretrained(folder)
    if config.model_type == "clip":
        return config.vision_config
    if config.model_type == "clip_vision_model":
        return config
    raise ValueError(f"{folder}: model_type {config.model_type!r} is neither 'clip' nor 'clip_vision_model'")


def map_clip_vision(state_dict: dict, config: CLIPVisionConfig) -> tuple[dict, list[str]]:
    """CLIP folder tensors -> ``CLIPVisionModel`` state dict, and the keys ignored on purpose.
    Raises ``ValueError`` listing unmapped, missing or mis-shaped keys."""
    ignored = sorted(k for k in state_dict if k.startswith(CLIP_IGNORED))
    renamed, unmapped = CLIP_KEYS.rename(k for k in state_dict if not k.startswith(CLIP_IGNORED))
    mapped = {new: state_dict[old] for old, new in renamed.items()}
    with torch.device("meta"):
        expected = CLIPVisionModel(config).state_dict()
    KeyReport.against("CLIP checkpoint", mapped, expected, unmapped).raise_if_any()
    return mapped, ignored


def map_convnext(state_dict: dict) -> tuple:
    """ConvNeXt tensors (open_clip or timm) -> ``(ConvNextConfig, state dict, ignored keys)``."""
    from transformers import ConvNextModel

    config, hf, ignored = timm_to_hf(state_dict)
    with torch.device("meta"):
        expected = ConvNextModel(config).state_dict()
    KeyReport.against("ConvNeXt checkpoint", hf, expected).raise_if_any()
    return config, hf, ignored


def high_resolution_size(low: CLIPVisionConfig, convnext_config) -> int:
    """Input side of the ConvNeXt so that it ends on the CLIP token grid (768 for CLIP-L/14-336
    with a stride-32 ConvNeXt)."""
    if int(low.image_size) % int(low.patch_size):
        raise ValueError(f"CLIP image_size {low.image_size} is not a multiple of its patch_size {low.patch_size}")
    stride = int(convnext_config.patch_size) * 2 ** (len(convnext_config.hidden_sizes) - 1)
    return int(low.image_size) // int(low.patch_size) * stride


def grow_vocabulary(model: ChatRexForConditionalGeneration, num_old: int, num_new: int) -> None:
    """Resize the input and output embeddings to ``num_new`` rows; rows ``num_old..`` start at
    the mean of rows ``..num_old`` (the pre-existing tokens), as the official code does. Rows
    beyond the old tokenizer (Qwen pads its embedding to 152064) are dropped first."""
    rows = model.get_input_embeddings().num_embeddings
    if num_old > rows:
        raise ValueError(f"the tokenizer has {num_old} tokens but the LLM's embedding only {rows} rows")
    model.resize_token_embeddings(num_new, mean_resizing=False)
    if num_new == num_old:
        return
    tables = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings().weight
    if out is not tables[0]:
        tables.append(out)
    with torch.no_grad():
        for weight in tables:
            weight[num_old:] = weight[:num_old].float().mean(dim=0).to(weight.dtype)


def compose_model(low_config: CLIPVisionConfig, low_state: dict, convnext_state: dict, llm: nn.Module, tokenizer):
    """Assemble ChatRex from loaded parts (no file access; works on the meta device too).

    Args:
        low_config, low_state: CLIP vision config and tensors (any CLIP folder layout).
        convnext_state: ConvNeXt tensors, open_clip or timm layout.
        llm: a causal LM (``AutoModelForCausalLM``); its body and head are reused, not copied.
        tokenizer: the LLM's tokenizer; the ChatRex special tokens are added to it.

    Returns:
        ``(model, processor, info)``; ``info`` lists the keys ignored on purpose.
    """
    low_mapped, low_ignored = map_clip_vision(low_state, low_config)
    high_config, high_mapped, high_ignored = map_convnext(convnext_state)
    high_config.image_size = high_resolution_size(low_config, high_config)
    config = ChatRexConfig(vision_low_config=low_config, vision_high_config=high_config, text_config=llm.config)
    body = ChatRexModel(config, language_model=llm.base_model)
    model = ChatRexForConditionalGeneration(config, model=body, lm_head=llm.get_output_embeddings())
    # After construction: post_init initialises modules that were not loaded by from_pretrained.
    # assign=True adopts the checkpoint tensors instead of copying them into the random ones.
    model.model.vision_low.load_state_dict(low_mapped, strict=True, assign=True)
    model.model.vision_high.load_state_dict(high_mapped, strict=True, assign=True)
    num_old = len(tokenizer)
    add_special_tokens(tokenizer)
    grow_vocabulary(model, num_old, len(tokenizer))
    model.attach_tokenizer(tokenizer)  # records the token ids; no resize left to do
    info = {"clip_ignored": low_ignored, "convnext_ignored": high_ignored, "added_tokens": len(tokenizer) - num_old,
            "vocab_size": len(tokenizer), "high_image_size": high_config.image_size}
    return model, ChatRexProcessor.from_model_config(model.config, tokenizer), info


def compose(clip: str | os.PathLike, convnext: str | os.PathLike, llm: str | os.PathLike, out: str | os.PathLike,
            tokenizer: str | os.PathLike | None = None, dtype: str = "auto") -> dict:
    """Compose the three parts into a ChatRex folder at ``out`` (model, processor,
    ``compose_info.json``) that ``ChatRexForConditionalGeneration.from_pretrained``,
    ``ChatRexPredictor.from_pretrained`` and ``train.chatrex`` (``model.init``) load.

    ``dtype``: ``"auto"`` keeps the LLM's stored dtype (float32 if it has none) for the whole
    model, or one of float32, bfloat16, float16. Returns the info dict.
    """
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    tok = AutoTokenizer.from_pretrained(tokenizer or llm)
    low_config = clip_vision_config(clip)
    low_state = read_folder_weights(clip)
    convnext_state = read_checkpoint(convnext)
    language, info = AutoModelForCausalLM.from_pretrained(llm, dtype=DTYPES.get(dtype, "auto"), output_loading_info=True)
    check_loading_info(llm, info)
    target = DTYPES.get(dtype) or (language.dtype if language.dtype.is_floating_point else torch.float32)
    model, processor, report = compose_model(low_config, low_state, convnext_state, language, tok)
    model.to(target)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    report = {"clip": str(clip), "convnext": str(convnext), "llm": str(llm), "dtype": str(target).replace("torch.", ""), **report}
    Path(out, INFO_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


# -- command line (arguments: chatrex.cli.convert._compose_arguments) ----------------------
def run(args: argparse.Namespace) -> int:
    info = compose(args.clip, args.convnext, args.llm, args.out, tokenizer=args.tokenizer, dtype=args.dtype)
    print(f"wrote {args.out}: vocab {info['vocab_size']} (+{info['added_tokens']} tokens), high-res input {info['high_image_size']} px, "
          f"{info['dtype']}; ignored {len(info['clip_ignored'])} CLIP and {len(info['convnext_ignored'])} ConvNeXt keys (see {INFO_NAME})")
    return 0
