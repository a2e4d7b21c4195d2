"""COCO, Objects365 and LVIS importers round-trip their fixtures."""

from __future__ import annotations

import json
import os

from chatrex.datasets import sidecar_path
from data_engine.schema import validate_record
from tests.datasets import tiny_sources as ts
from tests.datasets.helpers import assert_box, xyxy


def _by_ann(records):
    return {r["annotation_id"]: (rec, r) for rec in records for r in rec["regions"]}


def test_coco_round_trip(tmp_path, run_import):
    src = ts.write_coco(str(tmp_path / "src"))
    rc, records, out = run_import("coco", "--ann", src["ann"], "--images", src["images"])
    assert rc == 0
    data = src["data"]
    assert [r["id"] for r in records] == [f"coco/{img['id']}" for img in data["images"]]
    for rec, img in zip(records, data["images"]):
        validate_record(rec)
        assert os.path.isabs(rec["image"]) and os.path.isfile(rec["image"])
        assert (rec["width"], rec["height"]) == (img["width"], img["height"])
        assert rec["source"]["dataset"] == "coco" and rec["source"]["image_id"] == img["id"]
        assert rec["source"]["file_name"] == img["file_name"]
    assert records[2]["regions"] == []  # image 139 has no annotations and is kept
    regions = _by_ann(records)
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert sorted(regions) == sorted(a["id"] for a in data["annotations"])
    for ann in data["annotations"]:
        rec, region = regions[ann["id"]]
        assert rec["source"]["image_id"] == ann["image_id"]
        assert_box(region["box"], xyxy(ann["bbox"]))
        assert region["category_id"] == ann["category_id"]  # gapped ids 1, 18, 90 kept
        assert region["category"] == names[ann["category_id"]]
        assert region.get("iscrowd", False) is bool(ann["iscrowd"])
    with open(sidecar_path(out, "categories.json")) as f:
        assert json.load(f) == data["categories"]


def test_objects365_paths_and_names(tmp_path, run_import):
    src = ts.write_objects365(str(tmp_path / "src"))
    rc, records, out = run_import("coco", "--ann", src["ann"], "--images", src["images"])
    assert rc == 0
    assert [r["id"] for r in records] == ["objects365/1", "objects365/2"]
    assert records[0]["image"] == os.path.join(src["images"], "patch8", "objects365_v1_00000001.jpg")
    assert records[1]["image"] == os.path.join(src["images"], "images", "v2", "patch16", "objects365_v2_00000002.jpg")
    assert records[0]["source"]["file_name"] == "images/v1/patch8/objects365_v1_00000001.jpg"
    assert [r["category"] for rec in records for r in rec["regions"]] == ["cigar or cigarette", "formula 1", "person"]
    with open(sidecar_path(out, "categories.json")) as f:
        cats = {c["id"]: c for c in json.load(f)}
    assert cats[3]["name"] == "Cigar/Cigarette " and cats[3]["prompt_name"] == "cigar or cigarette"
    assert "prompt_name" not in cats[7] and cats[7]["name"] == "SUV"
    for ann in src["data"]["annotations"]:
        assert_box(_by_ann(records)[ann["id"]][1]["box"], xyxy(ann["bbox"]))


def test_objects365_flag_overrides_file_name(tmp_path, run_import):
    src = ts.write_coco(str(tmp_path / "src"))
    rc, records, _ = run_import("coco", "--ann", src["ann"], "--images", src["images"], "--objects365")
    assert rc == 0 and records[0]["source"]["dataset"] == "objects365"


def test_lvis_round_trip(tmp_path, run_import):
    src = ts.write_lvis(str(tmp_path / "src"))
    rc, records, out = run_import("lvis", "--ann", src["ann"], "--images", src["images"])
    assert rc == 0
    root = src["images"]
    assert [r["image"] for r in records] == [os.path.join(root, "val2017", "000000000042.jpg"),
                                             os.path.join(root, "000000000073.jpg"),
                                             os.path.join(root, "val2017", "000000000139.jpg")]
    for rec, img in zip(records, src["data"]["images"]):
        validate_record(rec)
        assert rec["id"] == f"lvis/{img['id']}"
        assert rec["source"]["neg_category_ids"] == img["neg_category_ids"]
        assert rec["source"]["not_exhaustive_category_ids"] == img["not_exhaustive_category_ids"]
    assert records[0]["source"]["file_name"] == "val2017/000000000042.jpg"
    for ann in src["data"]["annotations"]:
        _, region = _by_ann(records)[ann["id"]]
        assert_box(region["box"], xyxy(ann["bbox"]))
        assert region["category_id"] == ann["category_id"] and "iscrowd" not in region
    assert records[1]["regions"][0]["category"] == "bow (weapon)"
    assert records[0]["regions"][0]["category"] == "teddy bear"
    with open(sidecar_path(out, "categories.json")) as f:
        cats = {c["id"]: c for c in json.load(f)}
    assert cats[3]["frequency"] == "r" and cats[3]["synonyms"] == ["bow_(weapon)", "longbow"]
    assert cats[3]["name"] == "bow_(weapon)" and cats[3]["prompt_name"] == "bow (weapon)"
    assert "prompt_name" not in cats[77]
