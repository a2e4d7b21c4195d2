"""The bundled chatrex-tiny: it loads by name, and its proposal network finds the objects of the
example images (examples/contents.json lists them with their boxes)."""

import json
import os

import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from chatrex.predictor import ChatRexPredictor, bundled_models

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")


@pytest.fixture(scope="module")
def predictor():
    return ChatRexPredictor.from_pretrained("chatrex-tiny", max_new_tokens=24)


@pytest.fixture(scope="module")
def contents():
    with open(os.path.join(EXAMPLES, "contents.json")) as f:
        return json.load(f)


def test_bundled_model_is_listed_and_fp16_on_disk():
    assert "chatrex-tiny" in bundled_models()
    from safetensors import safe_open

    path = os.path.join(os.path.dirname(__import__("chatrex").__file__), "bundled", "chatrex-tiny", "model.safetensors")
    with safe_open(path, "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16


def test_proposals_cover_every_example_object(predictor, contents):
    for example in contents:
        n = predictor.set_image(Image.open(os.path.join(EXAMPLES, example["image"])))
        assert 0 < n <= 100
        known = torch.tensor([o["box"] for o in example["objects"]])
        best = box_iou(known, predictor.boxes).max(dim=1).values
        assert (best >= 0.5).all(), (example["image"], best)


def test_answers_are_well_formed(predictor, contents):
    predictor.set_image(Image.open(os.path.join(EXAMPLES, contents[0]["image"])))
    det = predictor.detect("boat")
    assert det.answer.startswith("<ground>") and "</objects>" in det.answer
    assert all(0 <= i < len(predictor.boxes) for i in det.indices)
    assert predictor.describe(0, level="category")


def _best_iou(box, boxes) -> float:
    return float(box_iou(torch.tensor([box]), torch.tensor(boxes)).max()) if boxes else 0.0


@pytest.mark.parametrize("level", ["category", "phrase", "referring"])
def test_predictor_finds_each_named_object_in_scene1(predictor, contents, level):
    example = contents[0]
    predictor.set_image(Image.open(os.path.join(EXAMPLES, example["image"])))
    for obj in example["objects"]:
        det = predictor.detect(obj[level])
        assert _best_iou(obj["box"], det.boxes) >= 0.5, (obj[level], det.answer, det.boxes)


@pytest.mark.slow
def test_predictor_finds_most_named_objects_in_all_examples(predictor, contents):
    # 37 of the 42 queries (14 objects x category / phrase / referring) find their object when
    # this test was written; the misses are scene2's star and two colour phrases in scene3.
    found, total = 0, 0
    for example in contents:
        predictor.set_image(Image.open(os.path.join(EXAMPLES, example["image"])))
        for obj in example["objects"]:
            for level in ("category", "phrase", "referring"):
                found += _best_iou(obj["box"], predictor.detect(obj[level]).boxes) >= 0.5
                total += 1
    assert total == 42 and found >= 34, f"{found}/{total}"
