import json
import os
import shutil

import pytest
import torch
from accelerate.utils import set_seed
from PIL import Image

from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor
from chatrex.utils.jsonl import JsonlRecords
from train.checkpointing import latest_checkpoint, list_checkpoints
from train.dataset import ChatRexCollator, ChatRexDataset
from train.model_loading import load_model_and_processor
from train.trainer import train

from .conftest import tiny_config


def _fixed_batch_loss(model, processor, records, stage_weights):
    ds = ChatRexDataset(JsonlRecords(records), stage_weights, seed=123)
    batch = ChatRexCollator(processor)([ds[i] for i in range(4)])
    batch.pop("skipped")
    with torch.no_grad():
        return float(model.eval()(**batch).loss)


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.slow
def test_each_stage_lowers_loss_on_fixed_batch(stage, records_path, tiny_tokenizer_dir, tmp_path):
    cfg = tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "out"), stage=stage, **{"train.max_steps": 8, "train.save_every": 100})
    cfg.validate()
    set_seed(cfg.train.seed)
    model0, proc0 = load_model_and_processor(cfg.model.init, cfg.model.tokenizer)
    before = _fixed_batch_loss(model0, proc0, records_path, cfg.data.task_weights)
    result = train(cfg)
    model = ChatRexForConditionalGeneration.from_pretrained(result.final_dir)
    after = _fixed_batch_loss(model, ChatRexProcessor.from_pretrained(result.final_dir), records_path, cfg.data.task_weights)
    assert result.steps == 8 and after < before - 0.3, (before, after)
    if stage == 1:  # frozen modules are untouched
        torch.testing.assert_close(model.model.vision_high.state_dict(), model0.model.vision_high.state_dict())
        torch.testing.assert_close(model.model.language_model.layers.state_dict(), model0.model.language_model.layers.state_dict())


@pytest.mark.slow
def test_resume_continues_exactly(records_path, tiny_tokenizer_dir, tmp_path):
    common = {"train.max_steps": 6, "train.save_every": 3, "optim.scheduler": "cosine", "optim.warmup_steps": 1, "train.keep_checkpoints": 5}
    straight = train(tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "a"), **common))
    # A run that stopped after step 3: only its step-3 checkpoint exists.
    os.makedirs(tmp_path / "b")
    shutil.copytree(tmp_path / "a" / "checkpoint-00000003", tmp_path / "b" / "checkpoint-00000003")
    resumed = train(tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "b"), **common), resume=True)
    assert resumed.steps == 6
    a = ChatRexForConditionalGeneration.from_pretrained(straight.final_dir).state_dict()
    b = ChatRexForConditionalGeneration.from_pretrained(resumed.final_dir).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    assert straight.weights_digest == resumed.weights_digest


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(records_path, tiny_tokenizer_dir, tmp_path, monkeypatch):
    cfg = tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "out"), **{"train.max_steps": 5, "train.save_every": 100})
    calls = {"n": 0}
    real = ChatRexCollator.__call__

    def interrupting(self, samples):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, samples)

    monkeypatch.setattr(ChatRexCollator, "__call__", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert [s for s, _ in list_checkpoints(cfg.train.output_dir)] == [3]
    monkeypatch.setattr(ChatRexCollator, "__call__", real)
    result = train(tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "out"), **{"train.max_steps": 5, "train.save_every": 100}), resume=True)
    assert result.steps == 5 and latest_checkpoint(cfg.train.output_dir).endswith("checkpoint-00000005")
    steps = [json.loads(line)["step"] for line in open(os.path.join(cfg.train.output_dir, "metrics.jsonl"))]
    assert steps == [1, 2, 3, 4, 5]  # no step logged twice across the interruption


@pytest.mark.slow
def test_bad_records_are_skipped_and_counted(records_path, tiny_tokenizer_dir, tmp_path):
    root = os.path.dirname(records_path)
    good = [json.loads(line) for line in open(records_path)]
    Image.new("RGB", (8, 8)).save(os.path.join(root, "images", "tiny.png"))
    with open(os.path.join(root, "images", "corrupt.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n this is not a png")
    bad = [
        {**good[0], "image": "images/missing.png"},
        {**good[0], "image": "images/corrupt.png"},
        {**good[0], "regions": [{**good[0]["regions"][0], "box": [500, 500, 600, 600]}]},
        {**good[0], "queries": [{"type": "phrase", "text": "x", "targets": [9]}], "conversations": [], "grounded_caption": "<ground>a</ground><objects><obj9></objects>", "caption": None},
    ]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in good[:2] + bad + good[2:]))
    cfg = tiny_config(str(mixed), tiny_tokenizer_dir, str(tmp_path / "out"), **{"train.max_steps": 5, "train.batch_size": 2, "train.save_every": 100, "data.task_weights": "{detection: 1, grounded_caption: 1}"})
    # Relative image paths resolve against the record file's folder.
    shutil.copytree(os.path.join(root, "images"), tmp_path / "images")
    with pytest.warns(UserWarning, match="skipping record"):
        result = train(cfg)
    assert result.steps == 5
    assert result.skipped_records == 4


def test_config_errors_name_the_field(records_path, tiny_tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="train.batch_size"):
        tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path), **{"train.batch_size": 0}).validate()
    with pytest.raises(ValueError, match="unknown key"):
        tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path), **{"train.learning_rate": 1}).validate()
    with pytest.raises(ValueError, match="does not exist"):
        tiny_config(str(tmp_path / "nope.jsonl"), tiny_tokenizer_dir, str(tmp_path)).validate()
    with pytest.raises(ValueError, match="set model.tokenizer"):
        load_model_and_processor("chatrex-tiny-random", None)


@pytest.mark.slow
def test_resume_with_grad_accum_across_epoch_boundaries(records_path, tiny_tokenizer_dir, tmp_path):
    # 6 records, batch 2 -> 3 batches per epoch; grad_accum 2 -> steps close at batches 2, 3 (epoch end), 5, 6, ...
    common = {"train.max_steps": 4, "train.save_every": 1, "train.grad_accum": 2, "train.keep_checkpoints": 10}
    straight = train(tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "a"), **common))
    os.makedirs(tmp_path / "b")
    shutil.copytree(tmp_path / "a" / "checkpoint-00000003", tmp_path / "b" / "checkpoint-00000003")
    resumed = train(tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "b"), **common), resume=True)
    assert straight.weights_digest == resumed.weights_digest


def test_config_type_errors_name_the_key(records_path, tiny_tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="optim.lr.default"):
        tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path), **{"optim.lr": "{default: 2e-4}"}).validate()
    with pytest.raises(ValueError, match="train.max_steps"):
        tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path), **{"train.max_steps": "ten"}).validate()
    with pytest.raises(ValueError, match="data.train"):
        tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path), **{"data.train": records_path}).validate()


def test_crash_after_checkpoint_does_not_duplicate_metrics(records_path, tiny_tokenizer_dir, tmp_path, monkeypatch):
    overrides = {"train.max_steps": 5, "train.save_every": 2}
    calls = {"n": 0}
    real = ChatRexCollator.__call__

    def crashing(self, samples):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return real(self, samples)

    monkeypatch.setattr(ChatRexCollator, "__call__", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "out"), **overrides))
    monkeypatch.setattr(ChatRexCollator, "__call__", real)
    # Step 3 was logged but never checkpointed; the resumed run starts again from step 2.
    train(tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "out"), **overrides), resume=True)
    rows = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    # Box-index accuracy is logged for batches whose answers hold indices (detection turns do).
    assert any(0.0 <= r.get("index_acc", -1) <= 1.0 for r in rows)
