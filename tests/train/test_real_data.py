"""Training on imported real data: weighted mixtures, the leakage filter, and samples built from
the records ``chatrex data import`` writes (crowd regions, region-less records, RefCOCO
queries, LLaVA conversations, text-only records)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard

from chatrex.datasets.cli import main as data_cli
from chatrex.datasets.leakage import (
    coco_id_from_path,
    coco_image_id,
    filter_records,
    heldout_image_ids,
    leakage_summary,
)
from chatrex.utils.jsonl import JsonlRecords
from tests.datasets import tiny_sources as tiny
from train.dataset import ChatRexCollator, ChatRexDataset, EpochSampler
from train.mixture import MixtureDataset, MixturePlan, parse_sources
from train.stages import apply_stage, build_param_groups, param_count
from train.trainer import train
from train.training_data import build_train_data

from .conftest import make_records, tiny_config

PERCEPTION = {"detection": 2.0, "region": 1.0}


def _import(tmp_path, name: str, *args) -> str:
    out = str(tmp_path / "records" / f"{name}.jsonl")
    assert data_cli(["import", *args, "--out", out, "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Every importer's output on the tiny fixtures of tests/datasets/tiny_sources.py."""
    root = tmp_path_factory.mktemp("imported")
    coco, lvis, refer = tiny.write_coco(str(root / "coco")), tiny.write_lvis(str(root / "lvis")), tiny.write_refer(str(root / "refer"))
    llava, vg = tiny.write_llava(str(root / "llava")), tiny.write_vg(str(root / "vg"))
    return {
        "coco": _import(root, "coco", "coco", "--ann", coco["ann"], "--images", coco["images"]),
        "lvis": _import(root, "lvis", "lvis", "--ann", lvis["ann"], "--images", lvis["images"]),
        "refcoco_val": _import(root, "refcoco_val", "refcoco", "--format", "refer", refer["pickle"], "--split", "val", "--images", refer["images"]),
        "refcoco_train": _import(root, "refcoco_train", "refcoco", "--format", "refer", refer["pickle"], "--split", "train", "--images", refer["images"]),
        "llava": _import(root, "llava", "llava", "--json", llava["json"], "--images", llava["images"], llava["extra_images"]),
        "vg": _import(root, "vg", "vg", "--regions", vg["regions"], "--images", vg["images"], "--image-data", os.path.join(vg["images"], "image_data.json")),
    }


def _records(path):
    return [json.loads(line) for line in open(path)]


# -- mixture syntax and sampling ------------------------------------------------------------
@pytest.mark.parametrize("entries, message", [
    ([{"path": "a.jsonl", "weight": 0}], r"data.train\[0\].*weight must be a number > 0, got 0"),
    ([{"path": "a.jsonl", "weight": -1.5}], r"weight must be a number > 0, got -1.5"),
    ([{"path": "a.jsonl", "weight": True}], r"weight must be a number > 0, got True"),
    ([{"path": "a.jsonl", "weight": "2"}], r"weight must be a number > 0, got '2'"),
    ([{"weight": 1}], r"data.train\[0\].*needs a 'path'"),
    ([{"path": "a.jsonl", "weigth": 1}], r"unknown key\(s\) \['weigth'\]"),
    ([{"path": "a.jsonl", "weight": 1}, "b.jsonl"], r"data.train\[1\] \('b.jsonl'\) has no weight but other entries do"),
    ([3], r"data.train\[0\] \(3\): expected a path or a mapping"),
])
def test_bad_mixture_entries_name_the_entry(entries, message):
    with pytest.raises(ValueError, match=message):
        parse_sources(entries)


def test_mixture_config_and_environment_paths(records_path, tiny_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RECORDS", os.path.dirname(records_path))
    cfg = tiny_config("x", tiny_tokenizer_dir, str(tmp_path / "out"), **{
        "data.train": "[{path: $RECORDS/records.jsonl, weight: 3}, {path: '${RECORDS}/records.jsonl', weight: 1}]"})
    assert [(s.path, s.weight) for s in cfg.validate().data.sources()] == [(records_path, 3.0), (records_path, 1.0)]
    with pytest.raises(ValueError, match=r"data.train\[0\].*weight must be a number > 0"):
        tiny_config("x", tiny_tokenizer_dir, str(tmp_path), **{"data.train": f"[{{path: {records_path}, weight: 0}}]"}).validate()
    with pytest.raises(ValueError, match="data.exclude file '/nope.jsonl' does not exist"):
        tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path), **{"data.exclude": "[/nope.jsonl]"}).validate()


def test_plan_draws_datasets_by_weight_and_records_without_repeats():
    sizes, weights = [50, 10, 40], [1.0, 1.0, 2.0]
    plan = MixturePlan(sizes, weights, seed=3)
    per_dataset = []
    for epoch in range(40):
        order = plan.epoch(epoch)
        assert len(order) == 100 and order.min() >= 0 and order.max() < 100
        counts = np.bincount([plan.dataset_of(r) for r in order], minlength=3)
        # Weights are per-dataset shares, whatever the dataset's size: 25 / 25 / 50 per epoch.
        assert np.all(np.abs(counts - np.array([25, 25, 50])) < 1)
        per_dataset.append(counts)
        small = order[(order >= 50) & (order < 60)]
        # 25 draws of 10 records: every record twice before any third time.
        assert set(np.bincount(small - 50, minlength=10)) <= {2, 3}
    assert np.array_equal(plan.epoch(7), MixturePlan(sizes, weights, seed=3).epoch(7))
    assert not np.array_equal(plan.epoch(7), plan.epoch(8))


def test_a_share_below_one_sample_per_epoch_still_comes_up():
    plan = MixturePlan([100, 5], [1.0, 0.003], seed=0)
    draws = sum(int(((plan.epoch(e) >= 100)).sum()) for e in range(1000))
    assert 150 < draws < 470  # expected 1000 * 105 * 0.003 / 1.003 = 314


def _mixture(records_path, tmp_path, weights=(1.0, 3.0)):
    other = make_records(tmp_path / "other", n=4, seed=1)
    base = ChatRexDataset(JsonlRecords([records_path, other]), PERCEPTION, seed=0)
    return MixtureDataset(base, MixturePlan([6, 4], list(weights), seed=0))


def test_mixture_samples_are_deterministic_and_keys_cover_epochs(records_path, tmp_path):
    ds = _mixture(records_path, tmp_path)
    assert len(ds) == 10
    a, b = ds[3], ds[3]
    assert a["conversation"] == b["conversation"] and a["record_index"] == ds.plan.epoch(0)[3]
    second = [ds[10 + i]["record_index"] for i in range(10)]
    assert second == ds.plan.epoch(1).tolist()
    assert sum(r >= 6 for r in second) in (7, 8)  # weight 3 of 4 -> 7.5 of 10 samples


def test_mixture_shards_across_processes_like_one_sampler(records_path, tmp_path):
    """accelerate.prepare wraps the loader's batch sampler in BatchSamplerShard: the two
    processes together see exactly the single-process order."""
    ds = _mixture(records_path, tmp_path)
    sampler = EpochSampler(len(ds), shuffle=False)
    batches = torch.utils.data.BatchSampler(sampler, batch_size=2, drop_last=False)
    single = [k for batch in batches for k in batch]
    shards = [list(BatchSamplerShard(batches, num_processes=2, process_index=i)) for i in range(2)]
    interleaved = [k for pair in zip(*shards) for batch in pair for k in batch]
    # 5 batches for 2 processes: accelerate evens them out by starting over for the last one.
    assert interleaved[: len(single)] == single and interleaved[len(single):] == single[:2]


def test_bad_record_is_replaced_within_its_dataset(records_path, tmp_path):
    first = open(records_path).readline()
    mixed = os.path.join(os.path.dirname(records_path), "mixed.jsonl")  # next to its images
    with open(mixed, "w") as f:
        f.write(first + json.dumps({"image": "gone.png", "regions": []}) + "\n")
    other = make_records(tmp_path / "other", n=3, seed=1)
    base = ChatRexDataset(JsonlRecords([mixed, other]), PERCEPTION, seed=0)
    ds = MixtureDataset(base, MixturePlan([2, 3], [1.0, 1.0], seed=0))
    position = int(np.flatnonzero(ds.plan.epoch(0) == 1)[0])
    with pytest.warns(UserWarning, match="skipping record 1"):
        sample = ds[position]
    # The last record of the first file is bad: its replacement wraps around inside that file
    # (record 0), not into the next file (record 2).
    assert sample["record_index"] == 0 and sample["skipped"][0][0] == 1


# -- samples from imported records -----------------------------------------------------------
def _answers(sample) -> list[str]:
    return [t["content"] for t in sample["conversation"] if t["role"] == "assistant"]


def test_crowd_regions_are_neither_targets_nor_boxes(imported):
    records = _records(imported["coco"])
    index = next(i for i, r in enumerate(records) if any(g.get("iscrowd") for g in r["regions"]))
    record = JsonlRecords(imported["coco"])[index]
    crowd = next(g for g in record["regions"] if g.get("iscrowd"))
    assert crowd["category"] == "person" and not any(g["category"] == "person" for g in record["regions"] if g is not crowd)
    crowd["box"] = [0.0, 0.0, 20.0, 20.0]
    # One proposal inside the crowd region (dropped, it may be one of the crowd), one outside.
    inside, outside = [2.0, 2.0, 9.0, 9.0], [40.0, 30.0, 60.0, 45.0]
    ds = ChatRexDataset([dict(record, proposals=[inside, outside])], {"detection": 1.0, "region": 1.0}, seed=0)
    phrases = set()
    for epoch in range(10):
        sample = ds[epoch]
        boxes = sample["boxes"].tolist()
        assert crowd["box"] not in boxes and inside not in boxes and outside in boxes
        for answer in _answers(sample):
            phrases.update(re.findall(r"<ground>(.*?)</ground>", answer) or [answer])
    assert "person" not in phrases and "dog" in phrases  # the crowd's category is never a target


def test_region_less_record_uses_proposals_or_is_skipped(imported, tmp_path):
    empty = next(r for r in _records(imported["coco"]) if not r["regions"])
    with_conversation = dict(empty, conversations=[{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A tile."}],
                             proposals=[[1.0, 1.0, 20.0, 20.0]])
    ds = ChatRexDataset([with_conversation], {"detection": 1.0, "conversation": 1.0}, seed=0)
    sample = ds[0]
    assert sample["task"] == "conversation" and sample["boxes"].tolist() == [[1.0, 1.0, 20.0, 20.0]]
    mixed = ChatRexDataset([empty, with_conversation], PERCEPTION, seed=0)
    with pytest.raises(RuntimeError, match="supports none of the tasks"):
        mixed[0]


def test_refcoco_queries_become_referring_questions(imported):
    record = _records(imported["refcoco_val"])[0]
    ds = ChatRexDataset(JsonlRecords(imported["refcoco_val"]), {"detection": 1.0}, seed=0)
    seen = set()
    for epoch in range(12):
        sample = ds[epoch]
        answer = _answers(sample)[0]
        phrase = re.match(r"<ground>(.*?)</ground>", answer).group(1)
        query = next(q for q in record["queries"] if q["text"] == phrase)
        (index,) = map(int, re.findall(r"<obj(\d+)>", answer))
        assert sample["boxes"][index].tolist() == record["regions"][query["targets"][0]]["box"]
        seen.add(phrase)
    assert len(seen) >= 2


def test_lvis_not_exhaustive_categories_are_not_asked_for(imported):
    lvis = _records(imported["lvis"])
    incomplete = [r for r in lvis if {g["category_id"] for g in r["regions"]} <= set(r["source"]["not_exhaustive_category_ids"])]
    complete = [r for r in lvis if r not in incomplete]
    assert incomplete and complete
    ds = ChatRexDataset(JsonlRecords(imported["lvis"]), {"detection": 1.0, "region": 1.0}, seed=0)
    for i, record in enumerate(lvis):
        tasks = {ds.sample(i, salt=(e,))["task"] for e in range(6)}
        assert tasks == ({"region"} if record in incomplete else {"detection", "region"})


def test_capped_targets_skip_the_query_instead_of_the_record(tmp_path):
    from PIL import Image

    Image.new("RGB", (200, 20)).save(tmp_path / "wide.png")
    regions = [{"box": [2.0 * i, 0.0, 2.0 * i + 2, 10.0], "category": "bar" if i == 0 else "dot"} for i in range(55)]
    crowded = {"image": str(tmp_path / "wide.png"), "regions": regions}
    plain = {"image": str(tmp_path / "wide.png"), "regions": [{"box": [0.0, 0.0, 5.0, 5.0], "category": "cat"}]}
    ds = ChatRexDataset([crowded, plain], {"detection": 1.0}, seed=0, max_boxes=50)
    used = 0
    for epoch in range(20):
        sample = ds.sample(0, salt=(epoch,))
        if sample["record_index"] == 0:
            used += 1
            # 54 dots never fit in 50 boxes: only "bar" (kept in 50 of 55 box lists) is asked for.
            assert len(sample["boxes"]) == 50 and _answers(sample)[0].startswith("<ground>bar</ground>")
    assert used >= 15  # a capped query no longer throws the record away


def test_llava_conversations_and_text_only_records(imported):
    rows = _records(imported["llava"])
    ds = ChatRexDataset(JsonlRecords(imported["llava"]), {"conversation": 1.0}, seed=0, turns_per_sample=4)
    for i, row in enumerate(rows):
        sample = ds[i]
        turns = sample["conversation"]
        # The conversation once (not once per drawn turn), without the <image> marker.
        assert len(turns) == len(row["conversations"]) and "<image>" not in turns[0]["content"]
        assert [t["content"] for t in turns[1::2]] == [t["value"] for t in row["conversations"][1::2]]
        assert (sample["image"] is None) == ("image" not in row) and len(sample["boxes"]) == 0
    text_only = rows.index(next(r for r in rows if "image" not in r))
    with pytest.raises(RuntimeError, match="no 'conversation'"):
        ChatRexDataset(JsonlRecords(imported["llava"]), PERCEPTION, seed=0).sample(text_only, within=(text_only, text_only + 1))


@pytest.mark.slow
def test_text_only_batches_train_and_always_image_keeps_the_towers_running(imported, tiny_model):
    model, processor = tiny_model
    ds = ChatRexDataset(JsonlRecords(imported["llava"]), {"conversation": 1.0}, seed=0)
    samples = [ds[i] for i in range(len(ds))]
    text = [s for s in samples if s["image"] is None]
    mixed = ChatRexCollator(processor)(samples)
    assert len(mixed["pixel_values_low"]) == len(samples) - len(text)
    alone = ChatRexCollator(processor)(text)
    assert "pixel_values_low" not in alone
    forced = ChatRexCollator(processor, always_image=True)(text)
    assert len(forced["pixel_values_low"]) == 1 and int((forced["input_ids"] == model.config.image_token_id).sum()) == processor.num_image_tokens
    model.train()
    for batch in (mixed, alone, forced):
        loss = model(**{k: v for k, v in batch.items() if k != "skipped"}).loss
        assert torch.isfinite(loss)
        loss.backward()


def test_zero3_partitioned_parameters_are_counted_and_grouped_by_their_full_shape(tiny_model):
    """A model loaded under ZeRO-3 holds empty tensors; sizes and shapes live in ds_numel/ds_shape."""
    model, _ = tiny_model
    counts = apply_stage(model, 2)
    weight = next(model.model.mm_projector.parameters())
    shape = weight.shape
    weight.data = torch.empty(0)
    weight.ds_shape, weight.ds_numel = shape, shape.numel()
    assert apply_stage(model, 2) == counts and param_count(weight) == shape.numel()
    groups = {g["name"]: g["params"] for g in build_param_groups(model, {"default": 1e-3}, weight_decay=0.1)}
    assert any(p is weight for p in groups["projectors"]) and not any(p is weight for p in groups["projectors/no_decay"])


# -- the leakage filter ---------------------------------------------------------------------
@pytest.mark.parametrize("path, image_id", [
    ("coco/train2017/000000000042.jpg", 42), ("/data/llava/coco/train2017/000000123456.jpg", 123456),
    ("COCO_train2014_000000000073.jpg", 73), ("train2014/COCO_val2014_000000000139.jpg", 139),
    ("gqa/images/2345.jpg", None), ("ocr_vqa/images/000000000042.jpg", None), ("000000000042.jpg", None), (None, None),
])
def test_coco_ids_from_file_names(path, image_id):
    assert coco_id_from_path(path) == image_id


def test_heldout_ids_and_filtering_per_dataset(imported):
    heldout = heldout_image_ids([imported["refcoco_val"], imported["lvis"]])
    # RefCOCO val holds image 42; the LVIS file 42, 73 and 139. A train file holds nothing out.
    assert heldout == {42, 73, 139} and heldout_image_ids([imported["refcoco_train"]]) == set()
    records = [r for name in ("coco", "llava", "vg", "refcoco_train") for r in _records(imported[name])]
    kept = filter_records(iter(records), {42})
    left = list(kept)
    assert kept.removed == {"coco": 1, "llava": 1, "vg": 1, "refcoco": 1} and kept.seen == len(records)
    assert all(coco_image_id(r) != 42 for r in left) and len(left) == len(records) - 4
    assert kept.summary() == f"leakage filter: removed 4 of {len(records)} records (coco: 1, llava: 1, refcoco: 1, vg: 1)"
    assert leakage_summary({}, 5) == "leakage filter: removed 0 of 5 records"


def _cli(argv):
    from chatrex.cli.main import main

    return main(["data", *argv])  # the command as registered in `chatrex data`


def test_filter_leakage_command(imported, tmp_path, capsys):
    out = tmp_path / "filtered" / "coco.jsonl"
    rc = _cli(["filter-leakage", "--train", imported["coco"], "--exclude", imported["refcoco_val"], "--out", str(out)])
    assert rc == 0
    kept = _records(out)
    assert [r["id"] for r in kept] == [r["id"] for r in _records(imported["coco"]) if r["source"]["image_id"] != 42]
    assert capsys.readouterr().out.startswith("leakage filter: removed 1 of 3 records (coco: 1); 1 held-out images")
    assert (tmp_path / "filtered" / "coco.categories.json").is_file()
    assert _cli(["filter-leakage", "--train", imported["coco"], "--exclude", "/nope.jsonl", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "chatrex data filter-leakage: error: evaluation record file '/nope.jsonl' does not exist\n"
    assert _cli(["filter-leakage", "--train", imported["coco"], "--exclude", imported["lvis"], "--out", imported["coco"]]) == 2
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"image": "a.png"}\nnot json\n{"image": "b.png"}\n')
    assert _cli(["filter-leakage", "--train", str(torn), "--exclude", imported["lvis"], "--out", str(tmp_path / "t.jsonl")]) == 2
    assert "torn.jsonl:2: not valid JSON" in capsys.readouterr().err and not (tmp_path / "t.jsonl.tmp").exists()
    assert [r["id"] for r in _records(out)] == [r["id"] for r in kept]  # the earlier output is untouched
    raw = tmp_path / "instances.json"  # a source file passed where records belong
    raw.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert _cli(["filter-leakage", "--train", str(raw), "--exclude", imported["lvis"], "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "instances.json:1: not a record" in capsys.readouterr().err and not (tmp_path / "r.jsonl").exists()


# -- training on a mixture with the leakage filter --------------------------------------------
def test_training_data_filters_then_mixes(imported, tiny_tokenizer_dir, tmp_path):
    def config(*names):
        train_files = ", ".join(f"{{path: {imported[n]}, weight: 1}}" for n in names)
        return tiny_config("x", tiny_tokenizer_dir, str(tmp_path / "out"), **{
            "data.train": f"[{train_files}]", "data.exclude": f"[{imported['refcoco_val']}]",
            "data.task_weights": "{detection: 1, conversation: 1}"}).validate()

    data = build_train_data(config("coco", "llava"))
    assert data.report[0] == "leakage filter: removed 2 of 7 records (coco: 1, llava: 1)"
    assert data.report[1].startswith("mixture: 5 samples per epoch") and data.dataset.plan.sizes == [2, 3]
    kept = {data.dataset.base.records[i]["id"] for i in range(5)}
    assert "coco/42" not in kept and "llava/000042" not in kept and "llava/sharegpt_7" in kept
    with pytest.raises(ValueError, match=r"no training records left in \[.*refcoco_train.jsonl'\] after the leakage filter"):
        build_train_data(config("coco", "refcoco_train"))


def test_mixture_run_resumes_exactly(records_path, tiny_tokenizer_dir, tmp_path):
    import shutil

    other = make_records(tmp_path / "other", n=3, seed=2)
    common = {"data.train": f"[{{path: {records_path}, weight: 1}}, {{path: {other}, weight: 2}}]", "train.max_steps": 4,
              "train.save_every": 2, "optim.scheduler": "cosine", "train.keep_checkpoints": 5}
    straight = train(tiny_config("x", tiny_tokenizer_dir, str(tmp_path / "a"), **common))
    os.makedirs(tmp_path / "b")
    shutil.copytree(tmp_path / "a" / "checkpoint-00000002", tmp_path / "b" / "checkpoint-00000002")
    resumed = train(tiny_config("x", tiny_tokenizer_dir, str(tmp_path / "b"), **common), resume=True)
    assert resumed.steps == 4 and straight.weights_digest == resumed.weights_digest
