"""ChatRex: a grounded multimodal LLM that answers with box indices."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from .answer import GroundedSpan, ParsedAnswer, parse_answer
from .configuration_chatrex import ChatRexConfig
from .image_processing import ChatRexImageProcessor
from .modeling_chatrex import (
    ChatRexForConditionalGeneration,
    ChatRexImageFeatures,
    ChatRexModel,
    ChatRexPreTrainedModel,
)
from .predictor import Answer, ChatRexPredictor, Detection, InputTooLongError
from .presets import PRESETS, get_preset_config
from .processing_chatrex import ChatRexProcessor
from .special_tokens import SPECIAL_TOKENS, add_special_tokens

# Registering with the auto classes lets AutoConfig/AutoModel*.from_pretrained(dir) resolve a
# saved ChatRex checkpoint by its model_type. exist_ok keeps re-imports harmless.
AutoConfig.register("chatrex", ChatRexConfig, exist_ok=True)
AutoModel.register(ChatRexConfig, ChatRexModel, exist_ok=True)
AutoModelForCausalLM.register(ChatRexConfig, ChatRexForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(ChatRexConfig, ChatRexForConditionalGeneration, exist_ok=True)

__all__ = [
    "ChatRexPredictor",
    "Answer",
    "Detection",
    "InputTooLongError",
    "ChatRexConfig",
    "ChatRexModel",
    "ChatRexPreTrainedModel",
    "ChatRexForConditionalGeneration",
    "ChatRexImageFeatures",
    "ChatRexProcessor",
    "ChatRexImageProcessor",
    "GroundedSpan",
    "ParsedAnswer",
    "parse_answer",
    "PRESETS",
    "get_preset_config",
    "SPECIAL_TOKENS",
    "add_special_tokens",
]
