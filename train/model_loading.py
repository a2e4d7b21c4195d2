"""Build or load the model and processor a training run starts from.

``init`` names one of three things, checked in this order:

1. a bundled model by name (``chatrex-tiny``): its trained weights, processor and tokenizer,
   exactly what ``ChatRexPredictor.from_pretrained("chatrex-tiny")`` and ``chatrex detect``
   load (they too try bundled names first);
2. a folder written by ``save_pretrained`` of a model and a processor (e.g. the previous
   stage's ``final/``);
3. a preset (``chatrex-tiny-scratch``, ``chatrex-7b``, ...): random weights of that
   architecture, which need a tokenizer folder.

No preset shares a name with a bundled model (tests/train/test_model_init.py checks it).
Hugging Face ids are not looked up here: download the folder and give its path.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoTokenizer

from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor, get_preset_config
from chatrex.predictor import BUNDLED_DIR, UPN_SUBDIR, bundled_models
from chatrex.presets import PRESETS


def init_folder(init: str) -> Path | None:
    """The folder ``init`` loads from (a local folder or a bundled model's), or ``None`` for a
    preset; ``ValueError`` lists the presets and the bundled names for anything else."""
    if init in bundled_models():
        return BUNDLED_DIR / init
    if os.path.isdir(init):
        return Path(init)
    if init in PRESETS:
        return None
    raise ValueError(
        f"model.init={init!r} is not a folder, a bundled model ({', '.join(bundled_models()) or 'none'}: trained weights) "
        f"or a preset ({', '.join(sorted(PRESETS))}: random weights)"
    )


def check_init(init: str, tokenizer: str | None = None, presets: bool = True) -> None:
    """A command line's ``--init`` / ``--tokenizer`` checked before anything loads, with
    ``ValueError`` in its words: ``init`` must name a folder, a bundled model or (when
    ``presets``) a preset, which needs ``tokenizer``; a ``tokenizer`` folder must exist (a
    missing one would otherwise be looked up on the Hugging Face hub)."""
    try:
        folder = init_folder(init)
    except ValueError as err:
        raise ValueError(str(err).replace(f"model.init={init!r}", f"--init {init!r}")) from None
    if folder is None and not presets:
        raise ValueError(f"--init {init!r} is a preset (random weights); give a ChatRex folder or a bundled model")
    if folder is None and tokenizer is None:
        raise ValueError(f"--init {init!r} is a preset (random weights): give --tokenizer, a tokenizer folder "
                         "(python -m train.tokenizer makes one)")
    if tokenizer is not None and not os.path.isdir(tokenizer):
        raise ValueError(f"--tokenizer folder not found: {tokenizer}")


def upn_folder(init: str) -> Path | None:
    """The proposal network that travels with ``init``: its folder's ``upn/`` subfolder (where a
    bundle keeps it and ``ChatRexPredictor`` looks for it), or ``None``."""
    folder = init_folder(init)
    if folder is None or not (folder / UPN_SUBDIR / "config.json").is_file():
        return None
    return folder / UPN_SUBDIR


def load_model_and_processor(init: str, tokenizer: str | None = None, config_overrides: dict | None = None):
    """The model and processor for ``init`` (a folder, a bundled name or a preset; module
    docstring). ``tokenizer`` is required with a preset and replaces the folder's otherwise.

    ``config_overrides`` change model-config fields on load (e.g. ``{"token_compression":
    "avgpool2x2"}`` to fine-tune a compressed variant); new modules start from random weights
    and the processor's visual-token count follows the new config.
    """
    overrides = dict(config_overrides or {})
    folder = init_folder(init)
    if folder is None:
        if tokenizer is None:
            raise ValueError(f"model.init={init!r} is a preset with random weights; set model.tokenizer to a tokenizer directory "
                             f"(or start from trained weights: a folder or a bundled model, {', '.join(bundled_models()) or 'none'})")
        tok = AutoTokenizer.from_pretrained(tokenizer)
        model = ChatRexForConditionalGeneration(get_preset_config(init, **overrides))
        model.attach_tokenizer(tok)
        return model, ChatRexProcessor.from_model_config(model.config, tok)
    # Bundles store fp16 to stay small; training keeps fp32 master weights (accelerate handles
    # mixed precision), and fp16 matmuls on a CPU are both slow and overflow.
    model = ChatRexForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, **overrides)
    processor = ChatRexProcessor.from_pretrained(tokenizer or folder)
    model.attach_tokenizer(processor.tokenizer)
    processor.num_image_tokens = model.config.num_image_tokens
    return model, processor
