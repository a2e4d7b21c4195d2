"""The detection benchmark with a fake model whose answers are known: P/R, mAP, proposal recall,
results.json and resume are checked against numbers computed by hand."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from chatrex.bench import detection, runner
from chatrex.bench.answerer import sort_proposals
from chatrex.bench.protocol import DetectionProtocol, ProposalProtocol, describe
from chatrex.text.prompts import PromptSet

PROMPTS = PromptSet(name="fake", detection={"category": "Please detect {phrase} in this image.", "referring": "Please detect {phrase} in this image."})

# Image 5: two dogs (A, B), one cat (C), a crowd of dogs (D). Image 7: nothing annotated.
A, B, C, D = [0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30], [40, 40, 60, 60]
PROPOSALS = {
    "five.png": ([A, [41, 41, 50, 50], C, [100, 100, 110, 110], [21, 0, 31, 10]], [0.9, 0.8, 0.7, 0.6, 0.5]),
    "seven.png": ([[0, 0, 5, 5]], [0.4]),
}


def timeless(metrics: dict) -> dict:
    """Metrics without the two timings, which differ from run to run."""
    return {k: v for k, v in metrics.items() if k not in ("seconds", "predict_seconds")}


def xywh(b):
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


class FakeAnswerer:
    """Proposals and answers from tables; records every question it is asked."""

    prompts = PROMPTS

    def __init__(self, answers: dict[str, list]):
        self.answers = answers
        self.asked: list[str] = []

    def proposals(self, image):
        boxes, scores = PROPOSALS[image.info["name"]]
        return sort_proposals(boxes, scores, 2)

    def answer(self, image, boxes, question):
        self.asked.append(question)
        return question, self.answers[question]


def load_image(path):
    image = Image.open(path)
    image.info["name"] = os.path.basename(path)
    return image


@pytest.fixture
def coco(tmp_path, monkeypatch):
    for name in PROPOSALS:
        Image.new("RGB", (128, 128)).save(tmp_path / name)
    ann = {
        "images": [{"id": 5, "file_name": "five.png", "width": 128, "height": 128}, {"id": 7, "file_name": "seven.png", "width": 128, "height": 128}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 18, "bbox": xywh(A), "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 18, "bbox": xywh(B), "area": 100, "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 90, "bbox": xywh(C), "area": 100, "iscrowd": 0},
            {"id": 4, "image_id": 5, "category_id": 18, "bbox": xywh(D), "area": 400, "iscrowd": 1},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 90, "name": "cat"}, {"id": 3, "name": "car"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(ann))
    monkeypatch.setattr(runner, "_load_image", load_image)
    return str(path), str(tmp_path)


PER_CATEGORY = {"Please detect dog in this image.": [("dog", [0, 1, 3])], "Please detect cat in this image.": [("cat", [2])]}
JOINT = {"Please detect dog; cat in this image.": [("dog", [0, 3]), ("Cat", [2]), ("zebra", [4])]}
# dog: P0 hits A, P1 lies inside the crowd (ignored), P3 is background: P 1/2, R 1/2; cat: P 1, R 1.
# COCO AP: dog reaches recall 0.5 at precision 1 -> 51 of 101 recall points; cat 1.0.
EXPECTED_MAP = (51 / 101 + 1.0) / 2


def run(ann, images, out, answers, mode="per-category", rank=0, world=1):
    protocol = DetectionProtocol(dataset="coco", annotations=ann, prompt_mode=mode)
    gt = detection.load_ground_truth(ann, images, "coco")
    answerer = FakeAnswerer(answers)
    if rank == 0:
        runner.prepare_out_dir(out, runner.run_description(protocol, images))
    runner.run_detection_shard(answerer, gt, protocol, out, rank, world, progress=False)
    return protocol, gt, answerer


def test_hand_computed_precision_recall_map_and_proposal_recall(coco, tmp_path):
    ann, images = coco
    out = str(tmp_path / "out")
    protocol, gt, answerer = run(ann, images, out, PER_CATEGORY)
    assert answerer.asked == list(PER_CATEGORY)  # gt-present, in category-id order; image 7 asks nothing
    m = runner.finalize_detection(gt, protocol, out, seconds=1.0)
    assert m["precision@0.5"] == pytest.approx(0.75) and m["recall@0.5"] == pytest.approx(0.75)
    assert m["mAP"] == pytest.approx(EXPECTED_MAP, abs=1e-6) and m["AP50"] == pytest.approx(EXPECTED_MAP, abs=1e-6)
    assert m["proposal_recall@100"] == 1.0  # A by P0, B by P4 (IoU 0.82), C by P2; the crowd is not counted
    assert (m["images"], m["queries"], m["detections"]) == (2, 2, 4)
    assert m["protocol"]["proposals"] == {"prompt": "fine", "min_score": 0.3, "max_proposals": 100, "nms_iou": 0.8, "score_decimals": 2}
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results[0] == {"image_id": 5, "category_id": 18, "bbox": xywh(A), "score": 0.9}
    assert [(r["category_id"], r["score"]) for r in results] == [(18, 0.9), (18, 0.8), (18, 0.6), (90, 0.7)]


def test_results_json_rescored_by_pycocotools_gives_the_same_map(coco, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann, images = coco
    out = tmp_path / "out"
    protocol, gt, _ = run(ann, images, str(out), PER_CATEGORY)
    m = runner.finalize_detection(gt, protocol, str(out), seconds=1.0)
    coco_gt = COCO(ann)
    ev = COCOeval(coco_gt, coco_gt.loadRes(str(out / "results.json")), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(m["mAP"], abs=1e-12)


def test_joint_prompt_maps_groups_back_by_phrase(coco, tmp_path):
    ann, images = coco
    out = str(tmp_path / "out")
    protocol, gt, answerer = run(ann, images, out, JOINT, mode="joint")
    assert answerer.asked == ["Please detect dog; cat in this image."]
    m = runner.finalize_detection(gt, protocol, out, seconds=1.0)
    assert m["precision@0.5"] == pytest.approx(0.75) and m["recall@0.5"] == pytest.approx(0.5 * (0.5 + 1))
    assert m["unmatched_phrases"] == 1  # "zebra" was not asked
    assert m["queries"] == 1


def test_assign_groups_by_name_containment_and_single_category():
    asked = {18: "dog", 90: "hot dog"}
    found, missed = detection.assign_groups([("the hot dogs", [1]), ("Dog", [2, 2]), ("tree", [3])], asked)
    assert found == {90: [1], 18: [2]} and missed == ["tree"]
    assert detection.assign_groups([("anything", [4])], {3: "car"}) == ({3: [4]}, [])


def test_sort_proposals_rounds_and_breaks_ties_by_upn_order():
    boxes, scores = sort_proposals([[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]], [0.301, 0.5, 0.304], 2)
    assert scores.tolist() == [0.5, 0.3, 0.3] and boxes[:, 0].tolist() == [1, 0, 2]


def test_two_shards_resume_after_a_torn_line_without_duplicates(coco, tmp_path):
    ann, images = coco
    single = str(tmp_path / "single")
    protocol, gt, _ = run(ann, images, single, PER_CATEGORY)
    expected = runner.finalize_detection(gt, protocol, single, seconds=0.0)

    out = str(tmp_path / "sharded")
    run(ann, images, out, PER_CATEGORY, rank=0, world=2)
    with pytest.raises(runner.BenchError, match="no prediction yet"):
        runner.finalize_detection(gt, protocol, out, seconds=0.0)
    part1 = os.path.join(out, "parts", "part-001-of-002.jsonl")
    with open(part1, "w") as f:
        f.write('{"key": "7", "image_id": 7, "quer')  # a kill -9 in the middle of a write
    _, _, again = run(ann, images, out, PER_CATEGORY, rank=0, world=2)
    assert again.asked == []  # rank 0's image is done
    run(ann, images, out, PER_CATEGORY, rank=1, world=2)
    lines = [json.loads(x) for x in open(part1)]
    assert [ln["key"] for ln in lines] == ["7"]
    got = runner.finalize_detection(gt, protocol, out, seconds=0.0)
    assert timeless(got) == timeless(expected) and got["predict_seconds"] >= 0


def test_a_folder_from_another_protocol_is_refused(coco, tmp_path):
    ann, images = coco
    out = str(tmp_path / "out")
    run(ann, images, out, PER_CATEGORY)
    other = DetectionProtocol(dataset="coco", annotations=ann, prompt_mode="joint")
    with pytest.raises(runner.BenchError, match="prompt_mode|protocol"):
        runner.prepare_out_dir(out, runner.run_description(other, images))


def test_lvis_rules_ignore_unverified_and_not_exhaustive_categories(tmp_path):
    ann = {
        "images": [{"id": 1, "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg", "width": 64, "height": 64,
                    "neg_category_ids": [2], "not_exhaustive_category_ids": [1]}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100}],
        "categories": [{"id": i, "name": n, "frequency": "f"} for i, n in ((1, "trash_can"), (2, "bow_(weapon)"), (3, "cat"))],
    }
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(ann))
    gt = detection.load_ground_truth(str(path), str(tmp_path), "lvis")
    assert gt.categories[1] == "trash can" and gt.images[0].path == str(tmp_path / "val2017" / "000000000001.jpg")
    dets = [{"category_id": 1, "index": 0, "box": [0, 0, 10, 10], "score": 0.9},  # TP
            {"category_id": 1, "index": 1, "box": [30, 30, 40, 40], "score": 0.8},  # not exhaustive: ignored
            {"category_id": 2, "index": 2, "box": [50, 50, 60, 60], "score": 0.7},  # verified absent: FP
            {"category_id": 3, "index": 3, "box": [50, 50, 60, 60], "score": 0.6}]  # unverified: ignored
    p, r, classes = detection.precision_recall([{"image_id": 1, "dets": dets}], gt, 0.5, federated=True)
    assert (p, r, classes) == (0.5, 1.0, 2)


def test_protocol_validates_and_describes_every_knob():
    with pytest.raises(ValueError, match="max_proposals"):
        ProposalProtocol(max_proposals=101)
    with pytest.raises(ValueError, match="prompt mode"):
        DetectionProtocol(dataset="coco", annotations="x", prompt_mode="both")
    text = describe(DetectionProtocol(dataset="coco", annotations="x"))
    for knob in ("categories", "prompt_mode", "proposals.min_score", "proposals.max_proposals", "proposals.nms_iou", "dataset"):
        assert knob in text


def test_lvis_average_precision_uses_lvis_rules(tmp_path):
    ann = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64, "neg_category_ids": [2], "not_exhaustive_category_ids": []}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "area": 100}],
        "categories": [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "r"}, {"id": 3, "name": "c", "frequency": "c"}],
    }
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(ann))
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
               {"image_id": 1, "category_id": 3, "bbox": [40, 40, 10, 10], "score": 0.8}]  # c is unverified: no penalty
    m = detection.average_precision(str(path), results, [1], "lvis")
    # One of two "a" boxes found at precision 1: 51 of 101 recall points; only "a" has ground truth.
    assert m["mAP"] == pytest.approx(51 / 101, abs=1e-6) and m["APf"] == pytest.approx(51 / 101, abs=1e-6)
    assert m["APr"] == -1.0  # no rare category with ground truth: faster-coco-eval's "absent"


class BatchingFakeAnswerer(FakeAnswerer):
    def __init__(self, answers):
        super().__init__(answers)
        self.batches: list[list[str]] = []

    def proposals(self, image):
        raise AssertionError("with --batch-size > 1 proposals come from proposals_batch")

    def proposals_batch(self, images):
        self.batches.append([im.info["name"] for im in images])
        return [FakeAnswerer.proposals(self, im) for im in images]


def test_batched_proposals_give_the_same_predictions(coco, tmp_path):
    ann, images = coco
    protocol = DetectionProtocol(dataset="coco", annotations=ann, prompt_mode="per-category")
    gt = detection.load_ground_truth(ann, images, "coco")
    out = {}
    for batch in (1, 2):
        out[batch] = str(tmp_path / f"b{batch}")
        runner.prepare_out_dir(out[batch], runner.run_description(protocol, images))
        answerer = BatchingFakeAnswerer(PER_CATEGORY) if batch > 1 else FakeAnswerer(PER_CATEGORY)
        runner.run_detection_shard(answerer, gt, protocol, out[batch], progress=False, batch_size=batch)
    assert answerer.batches == [["five.png", "seven.png"]]
    first, second = (runner.finalize_detection(gt, protocol, out[b], seconds=0.0) for b in (1, 2))
    assert timeless(first) == timeless(second)


def test_another_model_in_the_same_folder_is_refused_and_an_empty_run_is_reused(coco, tmp_path):
    ann, images = coco
    protocol = DetectionProtocol(dataset="coco", annotations=ann)
    out = str(tmp_path / "out")
    tiny = runner.run_description(protocol, images, {"model": "chatrex-tiny"})
    big = runner.run_description(protocol, images, {"model": "/models/chatrex-7b"})
    runner.prepare_out_dir(out, tiny)
    runner.prepare_out_dir(out, big)  # nothing predicted yet (e.g. a wrong --images): the folder is free
    with runner.PartWriter(out) as w:
        w.append({"key": "5"})
    with pytest.raises(runner.BenchError, match=r"model.model: '/models/chatrex-7b' -> 'chatrex-tiny'"):
        runner.prepare_out_dir(out, tiny)


def test_a_longer_limit_reuses_the_predictions_of_a_shorter_one(coco, tmp_path):
    ann, images = coco
    out = str(tmp_path / "out")
    protocol, _, _ = run(ann, images, out, PER_CATEGORY)
    first = detection.load_ground_truth(ann, images, "coco", limit=1)
    assert runner.finalize_detection(first, protocol, out, seconds=0.0)["images"] == 1
    both = detection.load_ground_truth(ann, images, "coco")
    answerer = FakeAnswerer(PER_CATEGORY)
    assert runner.run_detection_shard(answerer, both, protocol, out, progress=False) == 0 and answerer.asked == []


@pytest.mark.parametrize("flag, value, message", [("--max-proposals", "200", "--max-proposals must be in [1, 100]"),
                                                  ("--nms", "2", "--nms must be an IoU in (0, 1] or none"),
                                                  ("--min-score", "-1", "--min-score must be in [0, 1]")])
def test_bad_knobs_are_named_by_their_flags(coco, tmp_path, capsys, flag, value, message):
    from chatrex.cli.main import main

    ann, images = coco
    assert main(["bench", "coco", "--ann", ann, "--images", images, "--out", str(tmp_path / "o"), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "o").exists()
