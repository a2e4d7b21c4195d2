"""ChatRexPredictor and the chatrex CLI on a tiny random model folder (wiring, caching, errors).

Behaviour of the trained bundled model is checked in test_bundled.py.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from chatrex.cli.main import main
from chatrex.predictor import Answer, ChatRexPredictor, Detection, resolve_model_path


@pytest.fixture(scope="module")
def model_dir(tiny_bundle_dir):
    return tiny_bundle_dir


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def predictor(model_dir):
    # min_score 0: a random UPN scores low, and the tests need some proposals.
    return ChatRexPredictor.from_pretrained(model_dir, proposal_min_score=0.0, max_new_tokens=8)


BOXES = [[0, 0, 40, 40], [50, 20, 120, 90], [10, 50, 60, 95]]


def test_set_image_encodes_once(predictor, image_path):
    calls = []
    handle = predictor.model.model.vision_high.register_forward_hook(lambda *a: calls.append(1))
    try:
        assert predictor.set_image(Image.open(image_path), boxes=BOXES) == 3
        assert len(calls) == 1
        answer = predictor.ask("find the red car")
        predictor.detect("red car")
        predictor.describe(1)
        assert len(calls) == 1  # questions reuse the cached features
        predictor.set_image(Image.open(image_path).convert("L"))  # a different image: encoded
        assert len(calls) == 2
        predictor.set_image(Image.open(image_path), boxes=BOXES)  # seen before: reused
        assert len(calls) == 2 and len(predictor.boxes) == 3
    finally:
        handle.remove()
    assert isinstance(answer, Answer)
    torch.testing.assert_close(predictor.boxes, torch.tensor(BOXES, dtype=torch.float32))


def test_proposals_come_from_upn(predictor, image_path):
    n = predictor.set_image(Image.open(image_path))
    assert 0 < n <= 100 and predictor.boxes.shape == (n, 4)
    assert set(predictor.granularity) <= {"fine", "coarse"}
    # propose() is the exact list set_image builds (up to the normalise/denormalise round trip).
    torch.testing.assert_close(predictor.propose(Image.open(image_path)).boxes, predictor.boxes, atol=1e-3, rtol=0)
    det = predictor.detect("boat")
    assert isinstance(det, Detection) and det.phrase == "boat"
    assert all(0 <= i < n for i in det.indices) and len(det.boxes) == len(det.indices) == len(det.scores)


def test_detect_indices_map_to_pixel_boxes(predictor, image_path, monkeypatch):
    predictor.set_image(Image.open(image_path), boxes=BOXES)
    monkeypatch.setattr(predictor, "_run_batch", lambda prompts, *a, **k: ["<ground>car</ground><objects><obj2><obj9></objects>"] * len(prompts))
    det = predictor.detect("car")
    assert det.indices == [2] and det.boxes == [pytest.approx(BOXES[2])]


def test_describe_a_new_box_extends_the_list(predictor, image_path, monkeypatch):
    predictor.set_image(Image.open(image_path), boxes=BOXES)
    seen = {}

    tokenizer = predictor.processor.tokenizer

    def fake(prompts, object_features=None):
        text = tokenizer.decode(prompts[0].input_ids[0])
        seen.update(question=text.split("\n")[-3].split("<|im_end|>")[0], k=text.count("<objfeat>"),
                    n=None if object_features is None else len(object_features[0]))
        return ["tree"]

    monkeypatch.setattr(predictor, "_run_batch", fake)
    assert predictor.describe([70, 5, 100, 30]) == "tree"
    assert seen == {"question": "What is the category of <obj3>?", "k": 4, "n": 4}
    predictor.describe([50, 20, 120, 90])  # an existing box is described by its index
    assert seen == {"question": "What is the category of <obj1>?", "k": 3, "n": None}


def test_predictor_errors(predictor, image_path):
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.ask("hi")
    predictor.set_image(Image.open(image_path), boxes=BOXES)
    with pytest.raises(ValueError, match="empty"):
        predictor.detect("  ")
    with pytest.raises(ValueError, match="level"):
        predictor.describe(0, level="poem")
    with pytest.raises(ValueError, match="out of range"):
        predictor.describe(7)
    with pytest.raises(ValueError, match="kind"):
        predictor.detect("car", kind="regex")
    with pytest.raises(ValueError, match="unknown model"):
        resolve_model_path("no-such-model")


@pytest.mark.slow
def test_cli_detect_json_and_out(model_dir, image_path, tmp_path, capsys):
    out = tmp_path / "annotated.png"
    assert main(["detect", str(image_path), "red car", "--model", str(model_dir), "--json", "--out", str(out)]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(payload) == {"phrase", "boxes", "answer"} and payload["phrase"] == "red car"
    assert isinstance(payload["boxes"], list)
    assert Image.open(out).size == Image.open(image_path).size


def test_cli_proposals(model_dir, image_path, capsys):
    assert main(["proposals", str(image_path), "--model", str(model_dir), "--min-score", "0", "--max-boxes", "5", "--granularity", "fine"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert 0 < len(lines) <= 5 and all(line.split()[-1] == "fine" for line in lines)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["detect", "/no/such.png", "car"], "image file not found"),
        (["detect", "{bad}", "car"], "cannot read image"),
        (["detect", "{img}", "  "], "phrase is empty"),
        (["detect", "{img}", "car", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["ask", "{img}", ""], "question is empty"),
        (["eval", "--data", "/nowhere", "--task", "referring"], "has no records.jsonl"),
    ],
)
def test_cli_bad_input_exit_code_2(argv, message, image_path, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    argv = [a.replace("{img}", str(image_path)).replace("{bad}", str(bad)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:\n  chatrex detect examples/scene1.png" in out and "--resume" in out


@pytest.mark.slow
def test_cache_tells_no_boxes_from_proposals(predictor, image_path):
    image = Image.open(image_path)
    assert predictor.set_image(image) > 0  # UPN proposals
    assert predictor.set_image(image, boxes=[]) == 0  # an explicit empty list is not "use UPN"
    assert predictor.set_image(image) > 0


def test_cli_model_without_upn_is_one_line_error(model_dir, image_path, tmp_path, capsys):
    import shutil

    no_upn = tmp_path / "no-upn"
    shutil.copytree(model_dir, no_upn, ignore=shutil.ignore_patterns("upn"))
    assert main(["detect", str(image_path), "car", "--model", str(no_upn)]) == 2
    assert "no proposal network" in capsys.readouterr().err
