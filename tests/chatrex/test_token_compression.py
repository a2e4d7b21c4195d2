"""Visual-token compression: hand-computed cases, and the model/processor wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor, get_preset_config
from chatrex.layers.token_compression import AvgPool2x2, BipartiteMerge, UnshuffleMLP
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
    # Tokens 0-3 point along e1 (lengths 1..4), tokens 4-7 along e2 (lengths 10..40).
    # Round 1 (8 -> 4; A = 0,2,4,6, B = 1,3,5,7; ties go to the first B token):
    #   0 and 2 merge into 1 -> 2*e1 (size 3); 3 stays 4*e1; 4 and 6 merge into 5 -> 20*e2 (size 3); 7 stays 40*e2.
    # Round 2 (4 -> 2): 2*e1 (size 3) + 4*e1 (size 1) -> (6 + 4) / 4 = 2.5*e1, and 20*e2 + 40*e2 -> 25*e2:
    # exactly the plain means of the original groups. Unweighted means would give 3*e1 and 30*e2.
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    x = torch.stack([e1 * v for v in (1, 2, 3, 4)] + [e2 * v for v in (10, 20, 30, 40)])[None]
    out = BipartiteMerge(keep=2)(x)
    assert out.shape == (1, 2, 2)
    assert torch.allclose(out[0], torch.tensor([[2.5, 0.0], [0.0, 25.0]]))


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
