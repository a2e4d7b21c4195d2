"""Named model presets: a small registry of config builders (as segment-anything's build_sam).

A preset is an architecture with random weights (the full-size ones are filled from released
weights by ``chatrex convert``). No preset shares a name with a bundled model
(``chatrex.predictor.bundled_models``): ``chatrex-tiny`` is the trained bundle, and its
architecture with random weights is ``chatrex-tiny-scratch``."""

from __future__ import annotations

from typing import Callable

from transformers import CLIPVisionConfig, ConvNextConfig, LlamaConfig, Qwen2Config

from .configuration_chatrex import ChatRexConfig


def _released_vision() -> dict:
    """OpenAI CLIP-L/14 at 336 px and LAION ConvNeXt-L at 768 px, as released."""
    return dict(
        vision_low_config=CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            patch_size=14, image_size=336, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        ),
        vision_high_config=ConvNextConfig(hidden_sizes=[192, 384, 768, 1536], depths=[3, 3, 27, 3], image_size=768, layer_norm_eps=1e-6),
    )


def chatrex_7b() -> ChatRexConfig:
    """Full size: CLIP ViT-L/14 at 336 px, LAION ConvNeXt-L at 768 px, Qwen2.5-7B.

    Equal to what ``chatrex convert compose`` builds from the three published parts
    (tests/chatrex/test_compose.py checks it on the meta device): Qwen2.5-7B's config.json with
    the vocabulary cut to its tokenizer plus the ChatRex tokens (151,665 + 106 = 151,771, as
    the official code resizes to ``len(tokenizer)``), and timm's ConvNeXt head-norm eps."""
    return ChatRexConfig(
        **_released_vision(),
        text_config=Qwen2Config(
            vocab_size=151771, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            bos_token_id=151643, eos_token_id=151643, tie_word_embeddings=False,
        ),
    )


# The released models' numerics (official_chatrex.md A.6, A.3): set by ``chatrex convert
# official`` and by the two presets below; our own presets keep the defaults.
OFFICIAL_NUMERICS = dict(
    vision_low_feature_layer=-2, projector_type="mlp2x_gelu", roi_output_size=7, roi_sampling_ratio=-1,
    roi_aligned=False, box_embed_order="cycxwh", vision_high_no_grad=True,
)


def rexseek_3b() -> ChatRexConfig:
    """The released RexSeek-3B: Qwen2.5-3B-Instruct with the 104 official tokens (vocabulary
    151,665 + 104 = 151,769, tied embeddings) and the official numerics. The placeholders'
    ids lie past the vocabulary (``chatrex.convert.official``)."""
    return ChatRexConfig(
        **_released_vision(),
        text_config=Qwen2Config(
            vocab_size=151769, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
            num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=True,
        ),
        tie_word_embeddings=True,
        **OFFICIAL_NUMERICS,
    )


def chatrex_7b_vicuna() -> ChatRexConfig:
    """The released ChatRex-7B: Vicuna-7B v1.5 (Llama) with vocabulary 32,000 + 104 = 32,104,
    untied head, and the official numerics (official_chatrex.md section 0.1)."""
    return ChatRexConfig(
        **_released_vision(),
        text_config=LlamaConfig(
            vocab_size=32104, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
            rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        ),
        **OFFICIAL_NUMERICS,
    )


def _tiny_vision() -> dict:
    # 64 px / patch 8 = 8x8 grid; 256 px / stride 32 = 8x8 grid.
    return dict(
        vision_low_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            patch_size=8, image_size=64, projection_dim=32,
        ),
        vision_high_config=ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], image_size=256),
    )


def chatrex_tiny_random() -> ChatRexConfig:
    """A few-hundred-thousand-parameter Qwen2 model for tests (random weights)."""
    return ChatRexConfig(
        **_tiny_vision(),
        text_config=Qwen2Config(
            vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
        ),
    )


def chatrex_tiny_random_llama() -> ChatRexConfig:
    """As ``chatrex-tiny-random`` with a Llama text model (the released ChatRex-7B is Vicuna/LLaMA)."""
    return ChatRexConfig(
        **_tiny_vision(),
        text_config=LlamaConfig(
            vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
        ),
    )


def chatrex_tiny_scratch() -> ChatRexConfig:
    """Random weights of the bundled model's architecture (~8M parameters), the starting point
    of ``train/recipes/chatrex_tiny.sh``, which trains it from scratch on the synthetic world.
    The trained weights are the bundled model ``chatrex-tiny`` (``chatrex/bundled/``), which is
    what that name means everywhere, ``model.init`` included.

    The architecture: CLIP ViT (4 layers, width 128) at 192 px / patch 16 and ConvNeXt (32-256
    channels) at 384 px both end on a 12x12 grid (144 visual tokens); Qwen2 with 4 layers at
    width 256.
    Box indices come from the pointer head, and ``<objK>`` tokens in the text carry box K's
    feature (:mod:`chatrex.layers.object_pointer`): a 4-layer LLM trained from scratch does not learn
    to retrieve indices by attention (MODEL_CARD.md)."""
    return ChatRexConfig(
        vision_low_config=CLIPVisionConfig(
            hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            patch_size=16, image_size=192, projection_dim=128,
        ),
        vision_high_config=ConvNextConfig(hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 4, 2], image_size=384),
        text_config=Qwen2Config(
            vocab_size=1024, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        ),
        object_index_embedding=True,
        object_pointer_head=True,
        object_reference_features=True,
    )


PRESETS: dict[str, Callable[[], ChatRexConfig]] = {
    "chatrex-tiny-scratch": chatrex_tiny_scratch,
    "chatrex-7b": chatrex_7b,
    "rexseek-3b": rexseek_3b,
    "chatrex-7b-vicuna": chatrex_7b_vicuna,
    "chatrex-tiny-random": chatrex_tiny_random,
    "chatrex-tiny-random-llama": chatrex_tiny_random_llama,
}


def get_preset_config(name: str, **overrides) -> ChatRexConfig:
    """The config of preset ``name`` with top-level fields replaced by ``overrides`` (e.g.
    ``token_compression="avgpool2x2"``); raises ``ValueError`` listing the known names."""
    if name not in PRESETS:
        from .predictor import bundled_models  # lazy: the predictor imports the model classes

        hint = ""
        if name in bundled_models():
            hint = (f" ({name!r} is a bundled trained model, not a preset: ChatRexPredictor.from_pretrained({name!r}) and "
                    f"model.init={name} load its weights)")
        raise ValueError(f"unknown preset {name!r}{hint}; known presets: {', '.join(sorted(PRESETS))}")
    if not overrides:
        return PRESETS[name]()
    return ChatRexConfig(**{**PRESETS[name]().to_dict(), **overrides})
