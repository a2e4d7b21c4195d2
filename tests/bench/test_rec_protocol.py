"""REC with a fake model whose answers are known: Acc@0.5 on the first box, the proposal
ceiling, and predictions.jsonl keyed by the source's sentence ids."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from chatrex.bench import rec, runner
from chatrex.bench.protocol import RecProtocol
from chatrex.datasets.refcoco import iter_sentences

from .test_detection_protocol import FakeAnswerer, load_image, xywh

A, B, FAR = [0, 0, 10, 10], [20, 0, 30, 10], [200, 200, 210, 210]


@pytest.fixture
def mdetr(tmp_path, monkeypatch):
    Image.new("RGB", (256, 256)).save(tmp_path / "five.png")
    sentences = [("the left dog", A), ("the right dog", B), ("the far cat", FAR)]
    data = {"images": [{"id": 100 + i, "file_name": "five.png", "original_id": 5, "caption": text, "width": 256, "height": 256,
                        "dataset_name": "refcoco"} for i, (text, _) in enumerate(sentences)],
            "annotations": [{"id": i, "image_id": 100 + i, "bbox": xywh(box), "area": 100, "iscrowd": 0, "category_id": 18, "original_id": 40 + i}
                            for i, (_, box) in enumerate(sentences)],
            "categories": [{"id": 18, "name": "dog"}]}
    path = tmp_path / "finetune_refcoco_val.json"
    path.write_text(json.dumps(data))
    monkeypatch.setattr(runner, "_load_image", load_image)
    return str(path), str(tmp_path)


ANSWERS = {
    "Please detect the left dog in this image.": [("the left dog", [0])],  # P0 = A: correct
    "Please detect the right dog in this image.": [("the right dog", [3, 4])],  # first is P3 (background): wrong, though P4 fits
    "Please detect the far cat in this image.": [],  # no box: wrong; no proposal near FAR either
}


def test_accuracy_on_the_first_box_and_the_proposal_ceiling(mdetr, tmp_path):
    src, images = mdetr
    sentences = list(iter_sentences("mdetr", src, images))
    assert [s.sent_id for s in sentences] == [100, 101, 102] and sentences[1].box == B and sentences[0].image_id == 5
    protocol = RecProtocol(dataset="refcoco", split="val", source_format="mdetr", source=src)
    out = str(tmp_path / "out")
    runner.prepare_out_dir(out, runner.run_description(protocol, images))
    fake = FakeAnswerer(ANSWERS)
    runner.run_rec_shard(fake, sentences, protocol, out, progress=False)
    m = runner.finalize_rec(sentences, protocol, out, seconds=1.0)
    assert m["acc@0.5"] == pytest.approx(1 / 3) and m["proposal_ceiling"] == pytest.approx(2 / 3)
    assert m["sentences"] == 3 and m["no_box"] == 1 and m["protocol"]["split"] == "val"
    lines = [json.loads(x) for x in open(tmp_path / "out" / "predictions.jsonl")]
    assert [ln["id"] for ln in lines] == [100, 101, 102]
    assert lines[0] == {"id": 100, "image_id": 5, "box": A, "iou": 1.0, "correct": True}
    assert lines[1]["box"] == [100, 100, 110, 110] and lines[1]["correct"] is False
    assert lines[2]["box"] is None and lines[2]["correct"] is False
    # Acc@0.5 recomputed from predictions.jsonl alone
    assert sum(ln["correct"] for ln in lines) / len(lines) == m["acc@0.5"]


def test_sentences_of_one_image_are_one_group():
    class S:
        def __init__(self, image):
            self.image = image

    groups = rec.group_by_image([S("a"), S("b"), S("a")])
    assert [[s.image for s in g] for g in groups] == [["a", "a"], ["b"]]


def test_all_splits_checks_every_file_before_the_first_split(mdetr, tmp_path, capsys):
    from chatrex.cli.main import main

    src, images = mdetr  # a folder with finetune_refcoco_val.json only
    folder = str(tmp_path)
    code = main(["bench", "refcoco", "--format", "mdetr", folder, "--all-splits", "--images", images, "--out", str(tmp_path / "o")])
    assert code == 2 and "7 of 8 split files missing" in capsys.readouterr().err and not (tmp_path / "o").exists()
    code = main(["bench", "refcoco", "--format", "mdetr", folder, "--images", images, "--out", str(tmp_path / "o")])
    assert code == 2 and "--all-splits" in capsys.readouterr().err
    code = main(["bench", "refcoco", "--format", "mdetr", src, "--split", "testA", "--images", images, "--out", str(tmp_path / "o")])
    assert code == 2 and "--split testA contradicts the file name finetune_refcoco_val.json" in capsys.readouterr().err
