import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from upn import UPNModel


def test_round_trip_identical_outputs(tmp_path, small_config):
    torch.manual_seed(0)
    model = UPNModel(small_config).eval()
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = UPNModel.from_pretrained(tmp_path)
    assert loaded.config == small_config
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        a, b = model(x, "coarse"), loaded(x, "coarse")
    assert torch.equal(a.logits, b.logits) and torch.equal(a.boxes, b.boxes)


def test_mismatched_weights_raise(tmp_path, small_config):
    UPNModel(small_config).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state.pop("fine_grained_prompt")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=f"^UPN weights in {tmp_path} do not match the model: ") as info:
        UPNModel.from_pretrained(tmp_path)
    assert info.match("fine_grained_prompt") and info.match("extra.weight")


def test_missing_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        UPNModel.from_pretrained(tmp_path)
