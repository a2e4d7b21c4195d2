"""Visual-token compression: hand-computed cases, and the model/processor wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor, get_preset_config
from chatrex.token_compression import AvgPool2x2, BipartiteMerge, UnshuffleMLP
from train.stages import apply_stage, build_param_groups


def test_avgpool_averages_each_2x2_block():
    grid = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1)  # 4x4 grid, row-major
    out = AvgPool2x2()(grid)
    assert out.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_unshuffle_mlp_shapes_and_learns():
    m = UnshuffleMLP(6)
    x = torch.randn(2, 16, 6)
    y = m(x)
    assert y.shape == (2, 4, 6) and m.num_output_tokens(16) == 4
    y.sum().backward()
    assert m.mlp[1].weight.grad is not None


def test_tome_merges_the_most_similar_pairs_with_size_weights():
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([0.0, 1.0])
    c = torch.tensor([1.0, 1.0])
    # Alternate split: A = tokens 0, 2, 4; B = tokens 1, 3, 5. Token 0 (a) matches token 1 (a) exactly.
    x = torch.stack([a, a, b, c, c * 3, b * 2])[None]
    out = BipartiteMerge(keep=5)(x)
    assert out.shape == (1, 5, 2)
    assert torch.allclose(out[0, 0], a)  # a + a merged into the first grid position
    # Merging identical tokens down to their distinct values loses nothing.
    same = torch.stack([a, a, b, b])[None]
    assert torch.allclose(BipartiteMerge(keep=2)(same)[0], torch.stack([a, b]))


def test_tome_keeps_size_weighted_means_across_rounds():
    x = torch.ones(1, 16, 3) * torch.arange(16.0)[None, :, None].div(100).add(1)  # near-parallel tokens
    out = BipartiteMerge(keep=3)(x)
    assert out.shape == (1, 3, 3)
    assert torch.allclose(out.mean(1), out.mean(1))  # finite
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("method, keep, expected", [("avgpool2x2", None, 16), ("unshuffle_mlp", None, 16), ("tome", 5, 5)])
def test_compressed_model_runs_and_round_trips(method, keep, expected, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    config = get_preset_config("chatrex-tiny-random", token_compression=method, token_compression_keep=keep)
    assert config.num_image_tokens == expected
    model = ChatRexForConditionalGeneration(config).eval()
    model.attach_tokenizer(tiny_tokenizer)
    proc = ChatRexProcessor.from_model_config(model.config, tiny_tokenizer)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    batch = proc(images=[image], conversations=[[{"role": "user", "content": "find the red car"}]], boxes=[[[2, 2, 20, 20]]])
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == expected
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    model.save_pretrained(tmp_path)
    again = ChatRexForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(logits, again(**{k: v for k, v in batch.items() if k != "labels"}).logits, atol=1e-5)


def test_compression_module_trains_with_the_projectors(tiny_tokenizer):
    model = ChatRexForConditionalGeneration(get_preset_config("chatrex-tiny-random", token_compression="unshuffle_mlp"))
    apply_stage(model, 1)
    assert all(p.requires_grad for p in model.model.token_compression.parameters())
    groups = build_param_groups(model, {"default": 1e-3})
    ids = {id(p) for g in groups if g["name"].startswith("projectors") for p in g["params"]}
    assert all(id(p) in ids for p in model.model.token_compression.parameters())


@pytest.mark.parametrize("kwargs, message", [
    ({"token_compression": "pool"}, "token_compression='pool'"),
    ({"token_compression": "tome"}, "token_compression_keep=None"),
    ({"token_compression": "tome", "token_compression_keep": 10_000}, "token_compression_keep=10000"),
])
def test_bad_compression_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_preset_config("chatrex-tiny-random", **kwargs)
