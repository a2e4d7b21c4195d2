import pytest

from upn import PRESETS, UPNConfig, get_config


@pytest.mark.parametrize("section,field,value", [
    ("transformer", "d_model", 250),          # not divisible by heads
    ("transformer", "num_queries", 0),
    ("transformer", "num_extra_levels", -1),
    ("transformer", "dropout", 1.5),
    ("loss", "focal_alpha", 2.0),
    ("loss", "weight_l1", -1.0),
    ("image", "max_size", 10),
    ("image", "std", [1.0, 0.0, 1.0]),
    ("backbone", "model_type", "vgg"),
    ("backbone", "out_features", []),
])
def test_bad_field_names_field(section, field, value):
    data = get_config("upn-tiny").to_dict()
    data[section][field] = value
    with pytest.raises(ValueError, match=rf"{section}\.{field}"):
        UPNConfig.from_dict(data)


def test_unknown_field_rejected():
    data = get_config("upn-tiny").to_dict()
    data["transformer"]["d_modle"] = 64
    with pytest.raises(ValueError, match=r"transformer\.d_modle"):
        UPNConfig.from_dict(data)


def test_round_trip_and_presets():
    for name in PRESETS:
        cfg = get_config(name)
        assert UPNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="upn-large"):
        get_config("upn-huge")
    large = get_config("upn-large")
    assert large.num_feature_levels == 5
    assert (large.transformer.d_model, large.transformer.num_heads, large.transformer.dim_feedforward,
            large.transformer.num_points, large.transformer.num_encoder_layers,
            large.transformer.num_decoder_layers, large.transformer.num_queries) == (256, 8, 2048, 4, 6, 6, 900)
