"""Tiny random models written in the released (official) layout, shared by test_official.py
and test_hub.py, and the session fixtures that build them (registered by conftest.py)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, ConvNextConfig, Qwen2Config

from chatrex import ChatRexConfig, ChatRexForConditionalGeneration
from chatrex.convert.official import to_official_state
from chatrex.official.synthetic import write_rexseek_tokenizer
from chatrex.presets import OFFICIAL_NUMERICS

MM_FIELDS = dict(mm_vision_tower="openai/clip-vit-large-patch14-336", mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                 mm_projector_type="mlp2x_gelu", mm_hidden_size=2560, object_hidden_size=2880, image_aspect_ratio="pad")


def _tiny_vision() -> dict:
    return dict(
        vision_low_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                                           patch_size=8, image_size=64, hidden_act="quick_gelu"),
        vision_high_config=ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 2, 1], image_size=256, layer_norm_eps=1e-6),
    )


def write_official(folder, model: ChatRexForConditionalGeneration, tokenizer_dir: str, model_type: str, drop=(), extra=None) -> dict:
    """Write ``model`` as an official-layout folder; returns the official state written."""
    os.makedirs(folder, exist_ok=True)
    state = to_official_state(model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    for key in drop:
        del state[key]
    state.update(extra or {})
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(folder, "model.safetensors"))
    config = {**model.config.text_config.to_dict(), **MM_FIELDS, "model_type": model_type, "architectures": ["RexSeekQwenForCausalLM"],
              "mm_hidden_size": model.config.image_feature_dim, "object_hidden_size": model.config.object_feature_dim}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    for name in os.listdir(tokenizer_dir):
        if name != "config.json":
            with open(os.path.join(tokenizer_dir, name), "rb") as src, open(os.path.join(folder, name), "wb") as dst:
                dst.write(src.read())
    return state


@pytest.fixture(scope="session")
def rexseek_tokenizer_dir(tmp_path_factory, qwen_tokenizer_dir):
    path = tmp_path_factory.mktemp("rexseek_tok")
    write_rexseek_tokenizer(qwen_tokenizer_dir, str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_official(tmp_path_factory, rexseek_tokenizer_dir):
    """(folder, original model): a tiny random Qwen2 model in RexSeek's layout."""
    config = ChatRexConfig(
        **_tiny_vision(),
        text_config=Qwen2Config(vocab_size=151769, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=1, tie_word_embeddings=True, max_position_embeddings=2048, eos_token_id=151645),
        tie_word_embeddings=True, **OFFICIAL_NUMERICS,
    )
    torch.manual_seed(0)
    model = ChatRexForConditionalGeneration(config).eval()
    folder = tmp_path_factory.mktemp("official") / "rexseek-tiny"
    write_official(folder, model, rexseek_tokenizer_dir, "rexseek_qwen")
    return folder, model


