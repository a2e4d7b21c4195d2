"""Build or load the model and processor a training run starts from."""

from __future__ import annotations

import os

import torch

from transformers import AutoTokenizer

from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor, get_preset_config
from chatrex.presets import PRESETS


def load_model_and_processor(init: str, tokenizer: str | None = None, config_overrides: dict | None = None):
    """``init`` is a preset name (random weights; needs ``tokenizer``) or a checkpoint directory
    written by ``save_pretrained`` of a model and a processor (e.g. the previous stage).

    ``config_overrides`` change model-config fields on load (e.g. ``{"token_compression":
    "avgpool2x2"}`` to fine-tune a compressed variant); new modules start from random weights
    and the processor's visual-token count follows the new config.
    """
    overrides = dict(config_overrides or {})
    if init in PRESETS:
        if tokenizer is None:
            raise ValueError(f"model.init={init!r} is a preset with random weights; set model.tokenizer to a tokenizer directory")
        tok = AutoTokenizer.from_pretrained(tokenizer)
        model = ChatRexForConditionalGeneration(get_preset_config(init, **overrides))
        model.attach_tokenizer(tok)
        return model, ChatRexProcessor.from_model_config(model.config, tok)
    if not os.path.isdir(init):
        raise ValueError(f"model.init={init!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a directory")
    # Bundles store fp16 to stay small; training keeps fp32 master weights (accelerate handles
    # mixed precision), and fp16 matmuls on a CPU are both slow and overflow.
    model = ChatRexForConditionalGeneration.from_pretrained(init, dtype=torch.float32, **overrides)
    processor = ChatRexProcessor.from_pretrained(tokenizer or init)
    model.attach_tokenizer(processor.tokenizer)
    processor.num_image_tokens = model.config.num_image_tokens
    return model, processor
