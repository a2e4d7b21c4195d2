import json
import os
import re

import numpy as np
import pytest

from chatrex.utils.jsonl import JsonlRecords
from train.box_list import build_box_list
from train.dataset import ChatRexDataset, EpochSampler
from train.tasks import BadSample, grounded_answer, remap_indices


def test_records_are_lazy_and_resolve_paths(records_path):
    recs = JsonlRecords(records_path)
    assert len(recs) == 6
    assert recs[2]["image"].endswith("data/images/2.png") and recs[2]["image"].startswith("/")
    assert recs.raw(2)["image"] == "images/2.png"
    assert len(recs._offsets) == 6  # only offsets are held
    with pytest.raises(IndexError):
        recs[6]


def test_records_skip_blank_lines_and_report_bad_json(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"image": "a.png"}\n\n{not json}\n')
    recs = JsonlRecords(p)
    assert len(recs) == 2
    with pytest.raises(ValueError, match="not valid JSON"):
        recs[1]


def test_box_list_mixes_dedups_shuffles_and_caps():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    props = np.array([[0, 0, 10, 11], [50, 50, 60, 60], [50, 50, 60, 61], [70, 70, 80, 80]], float)
    bl = build_box_list(gt, props, np.random.default_rng(0), max_boxes=100, dedup_iou=0.7)
    # The near-duplicate of gt[0] and of the kept (50,50,60,60)-like proposal are removed.
    assert len(bl.boxes) == 4
    for g, idx in enumerate(bl.gt_to_index):
        assert np.array_equal(bl.boxes[idx], gt[g])
    capped = build_box_list(gt, props, np.random.default_rng(0), max_boxes=3)
    assert len(capped.boxes) == 3 and None not in capped.gt_to_index
    again = build_box_list(gt, props, np.random.default_rng(0), max_boxes=100, dedup_iou=0.7)
    assert np.array_equal(again.boxes, bl.boxes)


def test_box_list_caps_ground_truth_beyond_max():
    gt = np.array([[i, 0, i + 1, 1] for i in range(150)], float)
    bl = build_box_list(gt, None, np.random.default_rng(0), max_boxes=100)
    assert len(bl.boxes) == 100 and sum(i is None for i in bl.gt_to_index) == 50


def test_remap_and_answers():
    assert remap_indices("a <obj0> b <obj2>", [5, None, 1]) == "a <obj5> b <obj1>"
    with pytest.raises(BadSample, match="has 3 regions"):
        remap_indices("<obj7>", [0, 1, 2])
    with pytest.raises(BadSample, match="capped"):
        remap_indices("<obj1>", [0, None])
    assert grounded_answer("cat", [3, 1]) == "<ground>cat</ground><objects><obj1><obj3></objects>"
    assert grounded_answer("dog", []) == "<ground>dog</ground><objects></objects>"


@pytest.mark.parametrize("task", ["detection", "region", "grounded_caption", "caption", "conversation"])
def test_every_task_builds_consistent_samples(records_path, task):
    ds = ChatRexDataset(JsonlRecords(records_path), {task: 1.0}, seed=0)
    for key in range(len(ds)):
        s = ds[key]
        assert s["task"] == task and s["skipped"] == []
        assert s["conversation"][0]["role"] == "user" and s["conversation"][-1]["role"] == "assistant"
        answer = s["conversation"][-1]["content"]
        for n in map(int, re.findall(r"<obj(\d+)>", answer)):
            assert n < len(s["boxes"])
        rec = ds.records[s["record_index"]]
        if task == "detection" and re.search(r"<obj\d+>", answer):
            # The answer's box is the ground-truth box of the query's target.
            idx = int(re.search(r"<obj(\d+)>", answer).group(1))
            assert s["boxes"][idx].tolist() == rec["regions"][0]["box"]


def test_samples_are_deterministic_and_epochs_differ(records_path):
    ds = ChatRexDataset(JsonlRecords(records_path), {"detection": 1, "region": 1}, seed=3)
    a, b = ds[1], ds[1]
    assert a["conversation"] == b["conversation"] and np.array_equal(a["boxes"], b["boxes"])
    epochs = {json.dumps(ds[e * len(ds) + 1]["conversation"]) + str(ds[e * len(ds) + 1]["boxes"].tolist()) for e in range(6)}
    assert len(epochs) > 1


def test_epoch_sampler_orders():
    s = EpochSampler(5, seed=1)
    first = list(s)
    assert sorted(first) == list(range(5)) and list(s) == first
    s.start_epoch(2)
    second = list(s)
    assert sorted(second) == list(range(10, 15))


def test_bad_task_weights(records_path):
    with pytest.raises(ValueError, match="unknown tasks"):
        ChatRexDataset(JsonlRecords(records_path), {"segmentation": 1.0})
    with pytest.raises(ValueError, match="positive"):
        ChatRexDataset(JsonlRecords(records_path), {"detection": 0.0})


def test_turns_per_sample_joins_independent_tasks_over_one_box_list(records_path):
    recs = JsonlRecords(records_path)
    one = ChatRexDataset(recs, {"detection": 1.0, "region": 1.0}, seed=3)
    many = ChatRexDataset(recs, {"detection": 1.0, "region": 1.0}, seed=3, turns_per_sample=4)
    a, b = one[1], many[1]
    assert len(b["conversation"]) == 8 and [t["role"] for t in b["conversation"]] == ["user", "assistant"] * 4
    assert len(b["task"].split("+")) == 4 and set(b["task"].split("+")) <= {"detection", "region"}
    # The first turn and the box list are what a one-turn sample would have drawn.
    assert b["conversation"][:2] == a["conversation"] and np.array_equal(a["boxes"], b["boxes"])
    assert many[1]["conversation"] == b["conversation"]  # deterministic
    with pytest.raises(ValueError, match="turns_per_sample must be in"):
        ChatRexDataset(recs, {"detection": 1.0}, turns_per_sample=0)


def test_every_answer_of_a_multi_turn_sample_is_supervised(records_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from chatrex import ChatRexProcessor, get_preset_config
    from train.dataset import ChatRexCollator

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    from chatrex import ChatRexForConditionalGeneration

    model = ChatRexForConditionalGeneration(get_preset_config("chatrex-tiny-random"))
    model.attach_tokenizer(tok)
    processor = ChatRexProcessor.from_model_config(model.config, tok)
    sample = ChatRexDataset(JsonlRecords(records_path), {"region": 1.0}, seed=0, turns_per_sample=3)[0]
    batch = ChatRexCollator(processor)([sample])
    labelled = processor.tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100])
    for turn in sample["conversation"][1::2]:
        assert turn["content"] in labelled
    assert not any(turn["content"] in labelled for turn in sample["conversation"][0::2])


def test_coordinate_format_rewrites_the_same_sample(records_path):
    from chatrex.text.coordinates import parse_coordinate_answer, quantize

    recs = JsonlRecords(records_path)
    weights = {"detection": 1.0, "region": 1.0, "grounded_caption": 1.0}
    idx = ChatRexDataset(recs, weights, seed=5, turns_per_sample=4)[2]
    crd = ChatRexDataset(recs, weights, seed=5, turns_per_sample=4, answer_format="coordinates")[2]
    assert crd["boxes"].shape == (0, 4) and crd["task"] == idx["task"]
    w, h = crd["image"].size
    for a, b in zip(idx["conversation"], crd["conversation"]):
        assert "<obj" not in b["content"].replace("<objects>", "").replace("</objects>", "")
        for n in map(int, re.findall(r"<obj(\d+)>", a["content"])):
            assert quantize(idx["boxes"][n], w, h) in b["content"]
        if a["role"] == "assistant" and a["content"].startswith("<ground>"):
            (phrase, boxes), = parse_coordinate_answer(b["content"], w, h)
            targets = [int(n) for n in re.findall(r"<obj(\d+)>", a["content"])]
            assert len(boxes) == len(targets)
            for box, t in zip(boxes, targets):
                assert np.abs(np.array(box) - idx["boxes"][t]).max() <= max(w, h) / 1000 + 1e-6


def test_coordinate_samples_collate_without_box_tokens(records_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor, get_preset_config
    from train.dataset import ChatRexCollator

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    model = ChatRexForConditionalGeneration(get_preset_config("chatrex-tiny-random"))
    model.attach_tokenizer(tok)
    processor = ChatRexProcessor.from_model_config(model.config, tok)
    ds = ChatRexDataset(JsonlRecords(records_path), {"detection": 1.0}, seed=0, answer_format="coordinates")
    batch = ChatRexCollator(processor)([ds[0], ds[1]])
    assert int((batch["input_ids"] == model.config.objfeat_token_id).sum()) == 0
    out = model(**{k: v for k, v in batch.items() if k != "skipped"})
    assert out.loss is not None and out.loss.isfinite()


def test_bad_records_are_skipped_and_reported(records_path, tmp_path):
    good = JsonlRecords(records_path).raw(0)
    good["image"] = str(JsonlRecords(records_path)[0]["image"])
    outside = dict(good, regions=[dict(good["regions"][0], box=[5000, 5000, 5100, 5100])])
    p = tmp_path / "mixed.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [dict(good, image=str(tmp_path / "gone.png")), outside, good]) + "\n")
    sample = ChatRexDataset(JsonlRecords(p), {"detection": 1.0}, seed=0)[0]
    assert sample["record_index"] == 2
    reasons = [reason for _, reason in sample["skipped"]]
    assert [i for i, _ in sample["skipped"]] == [0, 1]
    assert reasons[0].startswith("BadSample: image file not found") and reasons[1].startswith("BadSample: bad region box")


def test_a_bug_is_not_mistaken_for_a_bad_record(records_path, monkeypatch):
    import train.dataset as dataset_module

    def broken_builder(record, gt_to_index, rng):
        raise ValueError("a bug in a task builder")

    monkeypatch.setitem(dataset_module.BUILDERS, "detection", broken_builder)
    with pytest.raises(ValueError, match="a bug in a task builder"):
        ChatRexDataset(JsonlRecords(records_path), {"detection": 1.0}, seed=0)[0]


def test_a_malformed_record_line_stops_training(records_path, tmp_path):
    lines = open(records_path).read().splitlines()
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join([lines[0], lines[1][:-5], lines[2]]) + "\n")  # line 2 cut short, not the last line
    records = JsonlRecords(p)
    image_dir = tmp_path / "images"
    image_dir.symlink_to(os.path.join(os.path.dirname(records_path), "images"))
    with pytest.raises(ValueError, match=r"r\.jsonl:2: not valid JSON"):
        ChatRexDataset(records, {"detection": 1.0}, seed=0)[1]


def test_multi_instance_answers_run_left_to_right():
    from train.tasks import order_objects

    boxes = [[50, 0, 60, 10], [0, 0, 10, 10], [20, 30, 30, 40], [20, 0, 30, 10]]
    text = "two cars <ground>cars</ground><objects><obj0><obj1><obj2><obj3></objects> and <ground>x</ground><objects></objects>"
    # centres x: 55, 5, 25, 25 -> 1, then 3 and 2 (same x: higher one first), then 0
    assert order_objects(text, boxes) == "two cars <ground>cars</ground><objects><obj1><obj3><obj2><obj0></objects> and <ground>x</ground><objects></objects>"


def test_negatives_and_whole_objects_are_drawn_at_their_shares():
    from train.tasks import COARSE_REGION_SHARE, NEGATIVE_SHARE, build_detection, build_region

    regions = [{"box": [i, 0, i + 1, 1], "category": f"c{i}", "granularity": "coarse" if i == 0 else "fine"} for i in range(20)]
    record = {"regions": regions, "queries": [{"type": "phrase", "text": f"q{i}", "targets": [i]} for i in range(19)]
              + [{"type": "phrase", "text": "purple dragon", "targets": []}]}
    rng = np.random.default_rng(0)
    answers = [build_detection(record, list(range(20)), rng)[1]["content"] for _ in range(2000)]
    negative = sum(a.endswith("<objects></objects>") for a in answers) / len(answers)
    assert abs(negative - NEGATIVE_SHARE) < 0.04, negative  # 1 negative in 20 queries would give 0.05
    questions = [build_region(record, list(range(20)), rng)[0]["content"] for _ in range(2000)]
    whole = sum("<obj0>" in q for q in questions) / len(questions)
    assert abs(whole - COARSE_REGION_SHARE) < 0.04, whole  # 1 whole object in 20 regions would give 0.05
