"""LLaVA, Rexverse and Visual Genome importers; text-only records in the schema."""

from __future__ import annotations

import base64
import os

import pytest

from chatrex.datasets.tsv import read_lineidx
from data_engine.schema import validate_record
from tests.datasets import tiny_sources as ts
from tests.datasets.helpers import assert_box


def test_llava_image_token_and_text_only_rows(tmp_path, run_import):
    src = ts.write_llava(str(tmp_path / "src"))
    rc, records, _ = run_import("llava", "--json", src["json"], "--images", src["images"], src["extra_images"])
    assert rc == 0
    assert [r["id"] for r in records] == [f"llava/{row['id']}" for row in src["rows"]]
    first, front, text_only, extra = records
    assert first["conversations"][0]["value"] == "<image>\nWhat is in the picture?"  # moved from the end
    assert [t["value"] for t in first["conversations"][1:]] == ["A red square.", "And the colour?", "Red."]
    assert front["conversations"][0]["value"] == "<image>\nDescribe it briefly."  # already in front: unchanged
    assert "image" not in text_only and text_only["conversations"] == src["rows"][2]["conversations"]
    assert extra["image"] == os.path.join(src["extra_images"], "sam", "sa_1.jpg")  # second root
    assert first["image"] == os.path.join(src["images"], "coco", "train2017", "000000000042.jpg")
    assert first["source"] == {"dataset": "llava", "id": "000042", "index": 0, "file": "llava_tiny.json",
                               "file_name": "coco/train2017/000000000042.jpg"}
    for rec in records:
        validate_record(rec)


def test_schema_allows_image_only_to_be_missing_in_text_only_records():
    conv = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    validate_record({"conversations": conv})
    for bad in ({"conversations": conv, "regions": []}, {"caption": "a cat"}, {"conversations": conv, "width": 4}):
        with pytest.raises(ValueError):
            validate_record(bad)
    with pytest.raises(ValueError, match=r"regions\[0\]\.iscrowd"):
        validate_record({"image": "a.jpg", "regions": [{"box": [0, 0, 1, 1], "iscrowd": 1}]})


def test_llava_text_only_row_with_image_token_is_a_bad_row(tmp_path, run_import, capsys):
    path = tmp_path / "bad.json"
    path.write_text('[{"id": "t1", "conversations": [{"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": "x"}]}]')
    rc, records, _ = run_import("llava", "--json", str(path), "--images", str(tmp_path))
    assert rc == 0 and records == []
    err = capsys.readouterr()
    assert "bad.json: element 0 (id 't1')" in err.err and "1 bad rows" in err.out


def test_rexverse_reads_by_lineidx(tmp_path, run_import):
    src = ts.write_rexverse(str(tmp_path / "src"))
    image_dir = tmp_path / "imgs"
    rc, records, _ = run_import("rexverse", "--images", src["images"], "--ann", src["ann"], "--image-dir", str(image_dir))
    assert rc == 0
    assert read_lineidx(src["ann"] + ".lineidx")[0] > 0 and read_lineidx(src["images"] + ".lineidx")[0] > 0
    assert [r["id"] for r in records] == ["rexverse/0", "rexverse/1", "rexverse/2"]
    for n, (rec, ann) in enumerate(zip(records, src["annotations"])):
        line = 2 - n  # the fixture points annotation n at image line 2 - n
        validate_record(rec)
        assert rec["image"] == str(image_dir / f"{line}.jpg")
        assert (rec["width"], rec["height"]) == src["sizes"][line]
        assert rec["source"]["image_id"] == src["keys"][line] and rec["source"]["annotation_line"] == n
        assert [r["phrase"] for r in rec["regions"]] == [b["phrase"] for b in ann["boxes"]]
        for region, b in zip(rec["regions"], ann["boxes"]):
            assert_box(region["box"], b["bbox"])
    # raw bytes as stored (not re-encoded), including the b'...'-wrapped line
    with open(src["images"], "rb") as f:
        stored = f.read().splitlines()[2].split(b"\t")[1]
    assert (image_dir / "1.jpg").read_bytes() == base64.b64decode(stored[2:-1])
    mtime = os.path.getmtime(image_dir / "1.jpg")
    rc, again, _ = run_import("rexverse", "--images", src["images"], "--ann", src["ann"], "--image-dir", str(image_dir), out="again.jsonl")
    assert again == records and os.path.getmtime(image_dir / "1.jpg") == mtime


def test_rexverse_unknown_schema_is_a_clear_error(tmp_path, run_import, capsys):
    src = ts.write_rexverse(str(tmp_path / "src"), annotations=[{"objs": [1], "caption_text": "x"}])
    rc, _, out = run_import("rexverse", "--images", src["images"], "--ann", src["ann"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "annotation.tsv: annotation line 0: unknown Rexverse annotation schema" in err
    assert "['caption_text', 'objs']" in err and not os.path.exists(out)


def test_rexverse_region_list_schema_with_referring_text(tmp_path, run_import):
    anns = [[{"box": [1, 2, 20, 10], "referring": "the left one"}], []]
    src = ts.write_rexverse(str(tmp_path / "src"), annotations=anns)
    rc, records, _ = run_import("rexverse", "--images", src["images"], "--ann", src["ann"])
    assert rc == 0
    assert records[0]["regions"] == [{"box": [1.0, 2.0, 20.0, 10.0], "referring": "the left one"}]
    assert records[0]["queries"] == [{"type": "referring", "text": "the left one", "targets": [0]}]


def test_vg_round_trip(tmp_path, run_import):
    src = ts.write_vg(str(tmp_path / "src"))
    rc, records, _ = run_import("vg", "--regions", src["regions"], "--images", src["images"])
    assert rc == 0
    assert records[0]["image"] == os.path.join(src["images"], "VG_100K", "1.jpg")
    assert records[1]["image"] == os.path.join(src["images"], "VG_100K_2", "2.jpg")
    for rec, entry in zip(records, src["data"]):
        validate_record(rec)
        assert rec["id"] == f"vg/{entry['id']}" and rec["source"]["image_id"] == entry["id"]
        for region, r in zip(rec["regions"], entry["regions"]):
            assert region["region_id"] == r["region_id"] and region["phrase"] == r["phrase"].strip()
            assert_box(region["box"], [r["x"], r["y"], r["x"] + r["width"], r["y"] + r["height"]])


def test_vg_image_data_gives_sizes_and_coco_ids(tmp_path, run_import):
    src = ts.write_vg(str(tmp_path / "src"))
    rc, records, _ = run_import("vg", "--regions", src["regions"], "--images", src["images"], "--image-data", src["image_data"])
    assert rc == 0
    assert records[0]["source"]["coco_id"] == 42 and "coco_id" not in records[1]["source"]
    assert [(r["width"], r["height"]) for r in records] == [(80, 60), (64, 48)]
