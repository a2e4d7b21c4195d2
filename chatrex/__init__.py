"""ChatRex: a grounded multimodal LLM that answers with box indices.

The public names load on first use (PEP 562), so that ``import chatrex`` and the CLI's start
cost no torch/transformers import: ``chatrex convert`` with a missing folder answers in well
under a second, and a command only pays for what it runs. Importing a model class registers
ChatRex with transformers' auto classes (``modeling_chatrex``, and ``processing_chatrex`` for
``AutoProcessor``); ``chatrex.register_auto()`` does it explicitly for code that only calls
``AutoModel*.from_pretrained`` / ``AutoProcessor.from_pretrained``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ChatRexPredictor": "predictor",
    "Detection": "predictor",
    "InputTooLongError": "predictor",
    "ChatRexConfig": "configuration_chatrex",
    "ChatRexModel": "modeling_chatrex",
    "ChatRexPreTrainedModel": "modeling_chatrex",
    "ChatRexForConditionalGeneration": "modeling_chatrex",
    "ChatRexImageFeatures": "modeling_chatrex",
    "ChatRexProcessor": "processing_chatrex",
    "ChatRexImageProcessor": "image_processing_chatrex",
    "GroundedSpan": "text.answer",
    "Answer": "text.answer",
    "parse_answer": "text.answer",
    "PRESETS": "presets",
    "get_preset_config": "presets",
    "SPECIAL_TOKENS": "text.special_tokens",
    "add_special_tokens": "text.special_tokens",
}

__all__ = list(_EXPORTS) + ["register_auto"]


def register_auto() -> None:
    """Make ``AutoConfig`` / ``AutoModel*`` / ``AutoProcessor`` ``.from_pretrained(dir)`` resolve ChatRex folders."""
    importlib.import_module(".modeling_chatrex", __name__)  # registers on import
    importlib.import_module(".processing_chatrex", __name__)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'chatrex' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
