import pytest
import torch
from transformers import ConvNextConfig

from chatrex import ChatRexConfig, ChatRexForConditionalGeneration, get_preset_config
from chatrex.presets import PRESETS


def test_defaults_are_full_size_geometry():
    cfg = ChatRexConfig()
    assert cfg.vision_grid == 24 and cfg.num_image_tokens == 576
    assert cfg.image_feature_dim == 1024 + 1536
    assert cfg.object_feature_dim == 2880


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"projector_type": "conv"}, "projector_type"),
        ({"max_objects": 101}, "max_objects"),
        ({"max_objects": 0}, "max_objects"),
        ({"roi_output_size": 0}, "roi_output_size"),
        ({"object_feature_levels": [0, 4]}, "object_feature_levels"),
        ({"object_feature_levels": []}, "object_feature_levels"),
        ({"pos_embed_temperature": -1.0}, "pos_embed_temperature"),
        ({"vision_low_feature_layer": -40}, "vision_low_feature_layer"),
        ({"vision_high_config": ConvNextConfig(hidden_sizes=[192, 384, 768, 1536], depths=[3, 3, 27, 3], image_size=640)}, "same token grid"),
        ({"vision_high_config": ConvNextConfig(hidden_sizes=[192, 384, 768, 1536], depths=[3, 3, 27, 3], image_size=770)}, "stride"),
        ({"vision_high_config": ConvNextConfig(hidden_sizes=[12, 384, 768, 1536], image_size=768)}, "divisible by 8"),
    ],
)
def test_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ChatRexConfig(**kwargs)


def test_unknown_preset_lists_known_names():
    with pytest.raises(ValueError, match="chatrex-7b"):
        get_preset_config("chatrex-13b")


def test_registry_contents():
    assert {"chatrex-7b", "chatrex-tiny-random"} <= set(PRESETS)


def test_chatrex_7b_on_meta_device():
    cfg = get_preset_config("chatrex-7b")
    with torch.device("meta"):
        model = ChatRexForConditionalGeneration(cfg)
    counts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in model.model.named_children()}
    total = sum(p.numel() for p in model.parameters())
    # Qwen2.5-7B body (7.07B) + lm_head (0.544B) + CLIP-L (0.30B) + ConvNeXt-L (0.196B) + projectors.
    assert 8.0e9 < total < 8.3e9
    assert counts["language_model"] == 7_069_569_024  # vocabulary 151,771: Qwen2.5 tokenizer + ChatRex tokens
    assert 3.0e8 < counts["vision_low"] < 3.1e8
    assert counts["mm_projector"] == 2560 * 3584 + 3584 + 3584 * 3584 + 3584
    assert counts["mm_object_projector"] == 2880 * 3584 + 3584 + 3584 * 3584 + 3584
    assert next(model.parameters()).device.type == "meta"


def test_config_round_trip(tmp_path):
    cfg = get_preset_config("chatrex-tiny-random")
    cfg.save_pretrained(tmp_path)
    again = ChatRexConfig.from_pretrained(tmp_path)
    assert again.to_dict() == cfg.to_dict()
    assert type(again.text_config).__name__ == "Qwen2Config"
