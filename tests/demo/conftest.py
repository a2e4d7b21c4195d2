"""A tiny random ChatRex + UPN folder for the demo tests (wiring, not answer quality)."""

import pytest
import torch
from transformers import AutoTokenizer

from upn import UPNModel, get_config

from ..conftest import build_tiny


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    model, proc = build_tiny("chatrex-tiny-random", AutoTokenizer.from_pretrained(tiny_tokenizer_dir))
    path = tmp_path_factory.mktemp("demo-model")
    model.save_pretrained(path)
    proc.save_pretrained(path)
    torch.manual_seed(0)
    UPNModel(get_config("upn-tiny")).save_pretrained(path / "upn")
    return path
