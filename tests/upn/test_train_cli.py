import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from train.upn import build_parser, load_coco_sources, main


def _write_fixture(root):
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (w, h) in enumerate([(64, 48), (40, 64), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"im{i}.png")
        images.append({"id": i, "file_name": f"im{i}.png", "width": w, "height": h})
    anns += [
        {"id": 1, "image_id": 0, "category_id": 1, "bbox": [5, 5, 20, 15]},
        {"id": 2, "image_id": 0, "category_id": 2, "bbox": [30, 10, 10, 10]},        # fine category
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [30, 50, 40, 40]},        # partly outside: clipped
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 2, 2]},  # skipped
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [100, 100, 5, 5]},       # fully outside: dropped
        # image 2 has no annotations: a negative sample with zero targets
    ]
    cats = [{"id": 1, "name": "thing"}, {"id": 2, "name": "part", "granularity": "fine"}]
    path = root / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(["--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    assert "--resume" in text and "coarse" in text and "granularity" in text


def test_load_sources_marks_and_skips(tmp_path):
    samples, skipped = load_coco_sources([(str(_write_fixture(tmp_path)), "coarse")], None)
    assert sorted((s["path"].rsplit("/", 1)[1], s["granularity"], len(s["boxes"])) for s in samples) == [
        ("im0.png", "coarse", 1), ("im0.png", "fine", 1), ("im1.png", "coarse", 2), ("im2.png", "coarse", 0)]
    assert skipped == {"non-finite or malformed bbox": 1}


def _run(out, steps, resume=False, json_path=None):
    argv = ["--coarse", str(json_path), "--output-dir", str(out), "--steps", str(steps), "--batch-size", "2",
            "--short-side", "64", "--max-size", "64", "--warmup-steps", "1", "--save-every", "1", "--cpu"]
    assert main(argv + (["--resume"] if resume else [])) == 0
    return load_file(out / "final" / "model.safetensors")


def _steps(out):
    return [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_two_steps_then_exact_resume(tmp_path):
    """One loop for every stage: a run stopped after step 2 and resumed ends bit-identical to a
    straight run (same data order, flips, RNG, optimizer and schedule)."""
    json_path = _write_fixture(tmp_path)
    straight = _run(tmp_path / "a", 3, json_path=json_path)
    assert (tmp_path / "a" / "final" / "config.json").is_file()
    assert (tmp_path / "a" / "checkpoint-00000003" / "trainer_state.json").is_file()
    assert not list((tmp_path / "a").glob("*.tmp*"))
    shutil.copytree(tmp_path / "a" / "checkpoint-00000002", tmp_path / "b" / "checkpoint-00000002")
    resumed = _run(tmp_path / "b", 3, resume=True, json_path=json_path)
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows) and {"lr", "loss_l1", "loss_giou"} <= rows[0].keys()
    assert _steps(tmp_path / "a") == _steps(tmp_path / "b") == [3]  # every run logs its last step


def test_resume_without_checkpoint_starts_from_scratch(tmp_path, capsys):
    json_path = _write_fixture(tmp_path)
    _run(tmp_path / "c", 1, resume=True, json_path=json_path)
    assert "no checkpoint in" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--batch-size", "-1"), ("--max-minutes", "0"), ("--grad-accum", "0")])
def test_bad_loop_options_name_the_flag(tmp_path, flag, value):
    json_path = _write_fixture(tmp_path)
    with pytest.raises(SystemExit, match=f"{flag} must be positive"):
        main(["--coarse", str(json_path), "--output-dir", str(tmp_path / "d"), flag, value, "--cpu"])
