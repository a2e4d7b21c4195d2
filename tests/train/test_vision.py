"""Stage 0 (``python -m train.vision``): encoder pretraining on region labels."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from chatrex import ChatRexForConditionalGeneration
from chatrex.utils.jsonl import JsonlRecords
from train.vision import LabelSpace, _patch_labels, main, preservation_loss


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def test_labels_and_patch_targets(records_path):
    recs = JsonlRecords(records_path)
    labels = LabelSpace(recs.raw(i) for i in range(len(recs)))
    assert labels.categories == ["background", "circle", "square"]
    # Two boxes on a 2x2 grid: the small box wins where they overlap, uncovered patches are background.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.3, 0.3]])
    out = _patch_labels(boxes, [{"category": 1, "color": 0}, {"category": 2, "color": 1}], grid=2)
    assert out["category"].tolist() == [2, 1, 0, 0]
    assert out["color"].tolist() == [1, 0, -100, -100]


@pytest.mark.slow
def test_vision_stage_trains_only_the_encoders_and_resumes(records_path, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "vision"
    common = ["--records", records_path, "--eval", records_path, "--init", "chatrex-tiny-random", "--tokenizer", tiny_tokenizer_dir,
              "--out", str(out), "--batch-size", "2", "--save-every", "2", "--log-every", "1", "--workers", "0", "--warmup-steps", "1"]
    assert main(common + ["--steps", "4", "--keep-checkpoints", "3"]) == 0
    straight = weights(out / "final")
    at_step_2 = {k.removeprefix("model."): v for k, v in weights(out / "checkpoint-00000002").items() if k.startswith("model.")}
    changed = {k.split(".")[1] for k in at_step_2 if not torch.equal(at_step_2[k], straight[k])}
    assert changed == {"vision_low", "vision_high"}, changed
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert "eval_box_category" in rows[-1]
    # Exact resume (the one training loop): a run stopped after step 2 (only its step-2
    # checkpoint left) and resumed ends bit-identical to the straight run.
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "checkpoint-00000002", resumed / "checkpoint-00000002")
    assert main([a if a != str(out) else str(resumed) for a in common] + ["--steps", "4", "--resume"]) == 0
    assert all(torch.equal(v, weights(resumed / "final")[k]) for k, v in straight.items())
    assert [json.loads(line)["step"] for line in open(resumed / "metrics.jsonl")] == [3, 4]
    model = ChatRexForConditionalGeneration.from_pretrained(out / "final")  # a complete ChatRex folder for stage 1
    assert model.config.image_token_id is not None


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be positive"), (["--records", "nope.jsonl"], "not found: nope.jsonl"),
    ([], "is a preset (random weights): give --tokenizer"),  # the default --init is a preset
    (["--tokenizer", "nowhere"], "--tokenizer folder not found: nowhere"),  # not looked up on the hub
    (["--init", "nowhere"], "--init 'nowhere' is not a folder, a bundled model"),
])
def test_vision_stage_argument_errors(args, message, tmp_path, capsys):
    base = {"--records": "x", "--steps": "1"}
    argv = ["--out", str(tmp_path)]
    merged = {**base, **dict(zip(args[::2], args[1::2]))}
    if merged["--records"] == "x":
        (tmp_path / "x.jsonl").write_text("")
        merged["--records"] = str(tmp_path / "x.jsonl")
    for k, v in merged.items():
        argv += [k, v]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_preserve_and_freeze_low_keep_clip_and_limit_drift(records_path, tiny_tokenizer_dir, tmp_path):
    """--freeze-low leaves CLIP untouched and trains the ConvNeXt; --preserve logs the drift
    from the starting towers, which starts at zero."""
    init = tmp_path / "init"
    assert main(["--records", records_path, "--init", "chatrex-tiny-random", "--tokenizer", tiny_tokenizer_dir, "--out", str(init),
                 "--steps", "1", "--batch-size", "2", "--workers", "0", "--warmup-steps", "1"]) == 0
    start = weights(init / "final")
    for preserve in ("0", "50"):
        out = tmp_path / f"p{preserve}"
        assert main(["--records", records_path, "--init", str(init / "final"), "--out", str(out), "--steps", "4", "--batch-size", "2",
                     "--log-every", "1", "--workers", "0", "--warmup-steps", "1", "--lr", "0.01", "--freeze-low", "--preserve", preserve]) == 0
        end = weights(out / "final")
        assert all(torch.equal(start[k], end[k]) for k in start if ".vision_low." in k)
        assert any(not torch.equal(start[k], end[k]) for k in start if ".vision_high." in k)
        rows = [json.loads(line) for line in open(out / "metrics.jsonl") if '"loss"' in line]
        assert "patch_category" not in rows[0]
        if preserve != "0":
            assert rows[0]["drift"] == 0.0


def test_preservation_loss_is_relative_and_skips_frozen_outputs():
    ref = (None, torch.ones(2, 3), torch.full((4, 2), 2.0))
    assert preservation_loss((None, ref[1].clone(), ref[2].clone()), ref).item() == 0.0
    moved = (None, ref[1] * 1.1, ref[2] * 1.1)
    loss = preservation_loss(moved, ref).item()
    assert loss == pytest.approx(2 * 0.01, rel=1e-4)  # each output: (0.1 x)^2 / x^2
    assert preservation_loss(tuple(None if t is None else 10 * t for t in moved), tuple(None if t is None else 10 * t for t in ref)).item() == pytest.approx(loss, rel=1e-4)


def test_training_images_convert_as_at_inference(tmp_path):
    """An RGBA training image reaches the encoders exactly as the same file does at inference."""
    import numpy as np
    from PIL import Image

    from chatrex.image_processing_chatrex import ChatRexImageProcessor
    from train.vision import RegionDataset

    rgba = np.random.default_rng(0).integers(0, 255, (20, 30, 4), dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    box = {"box": [2, 3, 20, 15], "category": "circle"}
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"image": str(path), "regions": [box]}) + "\n")
    ip = ChatRexImageProcessor(low_size=28, high_size=64)
    item = RegionDataset([str(records)], ip, LabelSpace([{"regions": [box]}]), grid=2)[0]
    low, high, _ = ip.preprocess(Image.open(path))  # what ChatRexPredictor.set_image does with a PIL image
    assert torch.equal(item["low"], low) and torch.equal(item["high"], high)
    flattened, _, _ = ip.preprocess(Image.open(path).convert("RGB"))  # the former training path dropped alpha
    assert not torch.equal(item["high"], flattened)
