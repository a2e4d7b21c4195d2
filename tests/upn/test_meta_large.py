import torch

from upn import UPNModel, get_config


def test_upn_large_param_count_on_meta():
    with torch.device("meta"):
        model = UPNModel(get_config("upn-large"))
    n = model.num_parameters()
    backbone = sum(p.numel() for p in model.backbone.body.parameters())
    # Swin-L is ~195M; the deformable transformer and heads add ~20M+.
    assert 190e6 < backbone < 200e6, backbone
    assert 210e6 < n < 230e6, n
    assert model.fine_grained_prompt.shape == (1, 256) == model.coarse_grained_prompt.shape
    assert all(p.device.type == "meta" for p in model.parameters())
