"""Training from cached encoder outputs (train.feature_cache): the cache holds exactly what the
towers compute, samples are the same as without it, and a cached run trains only the
projectors and the LLM."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from chatrex.utils.jsonl import JsonlRecords
from train.dataset import ChatRexCollator, ChatRexDataset
from train.feature_cache import FeatureCache, build_cache, vision_digest
from train.model_loading import load_model_and_processor
from train.trainer import train

from .conftest import tiny_config

WEIGHTS = {"detection": 1.0, "region": 1.0, "grounded_caption": 1.0}


@pytest.fixture
def tiny(tiny_tokenizer_dir):
    torch.manual_seed(0)
    return load_model_and_processor("chatrex-tiny-random", tiny_tokenizer_dir)


@pytest.mark.slow
def test_cache_holds_the_towers_outputs_and_samples_are_unchanged(records_path, tiny):
    model, processor = tiny
    folder = build_cache(records_path, model, processor, progress=False)
    cache = FeatureCache(folder)
    records = JsonlRecords([records_path])
    plain = ChatRexDataset(records, WEIGHTS, seed=3, turns_per_sample=2)
    cached = ChatRexDataset(records, WEIGHTS, seed=3, turns_per_sample=2, feature_cache=cache)
    for key in range(len(records) + 2):  # into the second epoch: new box lists
        a, b = plain[key], cached[key]
        assert a["conversation"] == b["conversation"] and np.array_equal(a["boxes"], b["boxes"])
        batch = processor(images=[a["image"]], conversations=[a["conversation"]], boxes=[a["boxes"]])
        with torch.no_grad():
            fused, stages = model.model.encode_image(batch["pixel_values_low"], batch["pixel_values_high"])
            pooled = model.model.object_encoder([s.float() for s in stages], batch["boxes"])[0]
        # fp16 storage: relative error ~1e-3
        assert torch.allclose(b["vision_features"].float(), fused[0], atol=2e-3 * float(fused.abs().max()))
        assert b["object_pooled"].shape == pooled.shape
        assert torch.allclose(b["object_pooled"].float(), pooled, atol=2e-3 * float(pooled.abs().max()))


def test_cached_batch_gives_the_same_loss_as_pixels(records_path, tiny):
    model, processor = tiny
    model.eval()
    cache = FeatureCache(build_cache(records_path, model, processor, progress=False))
    records = JsonlRecords([records_path])
    collate = ChatRexCollator(processor)
    samples_plain = [ChatRexDataset(records, WEIGHTS, seed=1)[i] for i in range(3)]
    samples_cached = [ChatRexDataset(records, WEIGHTS, seed=1, feature_cache=cache)[i] for i in range(3)]
    plain, cached = collate(samples_plain), collate(samples_cached)
    assert torch.equal(plain["input_ids"], cached["input_ids"]) and torch.equal(plain["labels"], cached["labels"])
    with torch.no_grad():
        loss_plain = model(**{k: v for k, v in plain.items() if k != "skipped"}).loss
        loss_cached = model(**{k: v for k, v in cached.items() if k != "skipped"}).loss
    assert float(loss_cached) == pytest.approx(float(loss_plain), rel=1e-3)


@pytest.mark.slow
def test_interrupted_build_resumes_and_other_weights_get_their_own_cache(records_path, tiny, monkeypatch):
    import train.feature_cache as fc

    model, processor = tiny
    monkeypatch.setattr(fc, "SHARD_SIZE", 2)  # 6 records -> 3 shards
    folder = build_cache(records_path, model, processor, progress=False)
    first = sorted(os.listdir(folder))
    os.remove(folder / "shard-00001.safetensors")
    before = {name: os.path.getmtime(folder / name) for name in ("shard-00000.safetensors", "shard-00002.safetensors")}
    assert build_cache(records_path, model, processor, progress=False) == folder
    assert sorted(os.listdir(folder)) == first
    assert all(os.path.getmtime(folder / n) == t for n, t in before.items())  # only the missing shard was written
    with torch.no_grad():
        model.model.vision_high.embeddings.patch_embeddings.weight.add_(0.1)
    assert vision_digest(model, processor)[:16] != folder.name.split("-")[0]
    assert build_cache(records_path, model, processor, progress=False) != folder


def test_edited_records_get_a_new_cache_and_an_unlisted_shard_is_rebuilt(records_path, tiny):
    model, processor = tiny
    folder = build_cache(records_path, model, processor, progress=False)
    index = json.loads((folder / "index.json").read_text())
    index["sizes"].pop("0")  # as if the run died between writing the shard and the index
    (folder / "index.json").write_text(json.dumps(index))
    assert build_cache(records_path, model, processor, progress=False) == folder
    assert FeatureCache(folder).size(0) == (96, 64)
    lines = open(records_path).read().splitlines()
    record = json.loads(lines[0])
    record["regions"][0]["box"][0] += 5.0
    lines[0] = json.dumps(record)
    open(records_path, "w").write("\n".join(lines) + "\n")
    assert build_cache(records_path, model, processor, progress=False) != folder


def test_bad_records_are_recorded_and_skipped(records_path, tiny):
    model, processor = tiny
    lines = open(records_path).read().splitlines()
    record = json.loads(lines[1])
    record["image"] = "images/missing.png"
    lines[1] = json.dumps(record)
    open(records_path, "w").write("\n".join(lines) + "\n")
    cache = FeatureCache(build_cache(records_path, model, processor, progress=False))
    assert "missing.png" in cache.bad_reason(1)
    with pytest.warns(UserWarning, match="skipping record 1"):
        sample = ChatRexDataset(JsonlRecords([records_path]), WEIGHTS, feature_cache=cache)[1]
    assert sample["record_index"] == 2 and sample["skipped"][0][0] == 1


@pytest.mark.slow
def test_cached_training_freezes_both_towers(records_path, tiny_tokenizer_dir, tmp_path):
    cfg = tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "out"), stage=3, **{"data.feature_cache": "true", "train.max_steps": 3})
    result = train(cfg)
    assert result.steps == 3 and np.isfinite(result.last_loss)
    torch.manual_seed(0)
    start, _ = load_model_and_processor("chatrex-tiny-random", tiny_tokenizer_dir)
    end, _ = load_model_and_processor(result.final_dir)
    assert end.config.vision_high_no_grad
    s0, s1 = start.state_dict(), end.state_dict()
    vision = [k for k in s0 if k.startswith(("model.vision_low.", "model.vision_high."))]
    assert vision and all(torch.equal(s0[k], s1[k]) for k in vision)
    assert not torch.equal(s0["model.mm_projector.0.weight"], s1["model.mm_projector.0.weight"])
