"""Stage 0 (``python -m train.vision``): encoder pretraining on region labels."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from chatrex import ChatRexForConditionalGeneration
from chatrex.jsonl import JsonlRecords
from train.vision import LabelSpace, _patch_labels, main


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


def test_vision_stage_trains_only_the_encoders_and_resumes(records_path, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "vision"
    common = ["--records", records_path, "--eval", records_path, "--init", "chatrex-tiny-random", "--tokenizer", tiny_tokenizer_dir,
              "--out", str(out), "--batch-size", "2", "--save-every", "2", "--log-every", "1", "--workers", "0", "--warmup-steps", "1"]
    assert main(common + ["--steps", "2"]) == 0
    first = weights(out / "final")
    assert main(common + ["--steps", "4", "--resume"]) == 0
    second = weights(out / "final")
    changed = {k.split(".")[1] for k in first if not torch.equal(first[k], second[k])}
    assert changed == {"vision_low", "vision_high"}, changed
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert "box_category" in rows[-1]["eval"]
    model = ChatRexForConditionalGeneration.from_pretrained(out / "final")  # a complete ChatRex folder for stage 1
    assert model.config.image_token_id is not None


@pytest.mark.parametrize("args, message", [(["--steps", "0"], "--steps must be positive"), (["--records", "nope.jsonl"], "not found: nope.jsonl")])
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
