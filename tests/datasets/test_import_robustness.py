"""Bad rows are reported with their place, re-runs are identical, interrupted runs leave no OUT."""

from __future__ import annotations

import json
import os

import pytest

from chatrex.datasets import sidecar_path
from chatrex.datasets import sink as sink_module
from chatrex.datasets.coco import import_coco
from chatrex.datasets.jsonstream import iter_json_array
from chatrex.utils.atomic import TEMP_PREFIX
from tests.datasets import tiny_sources as ts


def _coco_with_bad_rows(tmp_path):
    src = ts.write_coco(str(tmp_path / "src"))
    data = src["data"]
    data["annotations"] += [
        {"id": 12, "image_id": 42, "category_id": 18, "bbox": [5.0, 5.0, 0.0, 4.0], "iscrowd": 0},    # no area
        {"id": 13, "image_id": 42, "category_id": 18, "bbox": [50.0, 5.0, 20.0, 4.0], "iscrowd": 0},  # 6 px outside
        {"id": 14, "image_id": 42, "category_id": 5, "bbox": [1.0, 1.0, 2.0, 2.0], "iscrowd": 0},     # unknown category
        {"id": 15, "image_id": 42, "category_id": 18, "bbox": [0.0, 0.0, 64.5, 48.0], "iscrowd": 0},  # 0.5 px: clipped
    ]
    with open(src["ann"], "w") as f:
        json.dump(data, f)
    return src


def test_bad_rows_are_reported_with_file_and_index(tmp_path, run_import, capsys):
    src = _coco_with_bad_rows(tmp_path)
    rc, records, out = run_import("coco", "--ann", src["ann"], "--images", src["images"])
    assert rc == 0
    std = capsys.readouterr()
    assert f"{src['ann']}: annotations[4] (id 12): degenerate box" in std.err
    assert f"{src['ann']}: annotations[5] (id 13): box [50, 5, 70, 9] (xyxy) outside image width 64" in std.err
    assert f"{src['ann']}: annotations[6] (id 14): category_id 5 is not in categories" in std.err
    summary = std.out.strip()
    assert "3 records (3 images, 5 regions" in summary and "3 bad rows" in summary
    assert "degenerate box: 1" in summary and "box outside image: 1" in summary and "unknown category_id: 1" in summary
    assert "boxes clipped by <= 1 px: 1" in summary
    assert [r["box"] for r in records[0]["regions"] if r["annotation_id"] == 15] == [[0.0, 0.0, 64.0, 48.0]]
    with open(sidecar_path(out, "bad.jsonl")) as f:
        assert [json.loads(line)["kind"] for line in f] == ["unknown category_id", "degenerate box", "box outside image"]


def _temporaries(out: str) -> list[str]:
    """Temporary files of an atomic write left beside ``out``."""
    return [n for n in os.listdir(os.path.dirname(out)) if n.startswith(TEMP_PREFIX)]


def test_strict_stops_at_the_first_bad_row(tmp_path, run_import, capsys):
    src = _coco_with_bad_rows(tmp_path)
    rc, _, out = run_import("coco", "--ann", src["ann"], "--images", src["images"], "--strict")
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "annotations[6] (id 14)" in err
    assert not os.path.exists(out) and not _temporaries(out)


def test_bad_jsonl_line_names_file_and_line(tmp_path, run_import, capsys):
    src = ts.write_refcoco_jsonl(str(tmp_path / "src"))
    with open(src["src"], "a") as f:
        f.write(json.dumps({"image": "COCO_train2014_000000000042.jpg", "sent": "far", "bbox": [60, 5, 90, 9],
                            "width": 64, "height": 48}) + "\n")
    rc, records, _ = run_import("refcoco", "--format", "jsonl", src["src"], "--images", src["images"])
    assert rc == 0 and sum(len(r["queries"]) for r in records) == 3
    assert f"{src['src']}:4: box [60, 5, 90, 9] (xyxy) outside image width 64" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["coco", "refer", "llava", "vg"])
def test_rerun_writes_an_identical_file(tmp_path, run_import, fmt):
    d = str(tmp_path / "src")
    if fmt == "coco":
        src = ts.write_coco(d)
        args = ("coco", "--ann", src["ann"], "--images", src["images"])
    elif fmt == "refer":
        src = ts.write_refer(d)
        args = ("refcoco", "--format", "refer", src["pickle"], "--images", src["images"], "--split", "val")
    elif fmt == "llava":
        src = ts.write_llava(d)
        args = ("llava", "--json", src["json"], "--images", src["images"])
    else:
        src = ts.write_vg(d)
        args = ("vg", "--regions", src["regions"], "--images", src["images"])
    rc1, _, out = run_import(*args)
    first = open(out, "rb").read()
    rc2, _, _ = run_import(*args)
    assert rc1 == rc2 == 0 and open(out, "rb").read() == first
    assert not _temporaries(out)


def test_interrupted_import_leaves_no_complete_looking_out(tmp_path, monkeypatch):
    src = ts.write_coco(str(tmp_path / "src"))
    out = str(tmp_path / "coco.jsonl")
    calls = []
    real = sink_module.validate_record

    def crash_on_second(record):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C midway looks like
        real(record)

    monkeypatch.setattr(sink_module, "validate_record", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        import_coco(src["ann"], src["images"], out, progress=False)
    assert not os.path.exists(out) and not _temporaries(out)
    assert not os.path.exists(sidecar_path(out, "categories.json"))
    # a complete earlier OUT is left as it was until a run completes
    monkeypatch.setattr(sink_module, "validate_record", real)
    import_coco(src["ann"], src["images"], out, progress=False)
    before = open(out, "rb").read()
    calls.clear()
    monkeypatch.setattr(sink_module, "validate_record", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        import_coco(src["ann"], src["images"], out, progress=False)
    assert open(out, "rb").read() == before


def test_missing_input_is_one_error_line(tmp_path, run_import, capsys):
    rc, _, _ = run_import("coco", "--ann", str(tmp_path / "nope.json"), "--images", str(tmp_path))
    err = capsys.readouterr().err
    assert rc == 2 and err == f"chatrex data import: error: {tmp_path / 'nope.json'}: no such file\n"


def test_json_array_stream_across_chunk_boundaries(tmp_path):
    rows = [{"id": i, "text": "a ] tricky, [string] \u00e9" * (i % 3), "n": 12345.678 + i} for i in range(50)] + [7, "x", None]
    path = tmp_path / "rows.json"
    path.write_text(" \n" + json.dumps(rows) + "\n")
    assert [r for _, r in iter_json_array(path, chunk_size=7)] == rows
    (tmp_path / "empty.json").write_text("[ ]")
    assert list(iter_json_array(tmp_path / "empty.json")) == []
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        list(iter_json_array(tmp_path / "obj.json"))
    (tmp_path / "cut.json").write_text('[{"a": 1}, {"b": ')
    with pytest.raises(ValueError, match="element 1: not valid JSON"):
        list(iter_json_array(tmp_path / "cut.json", chunk_size=4))


def test_mistakes_a_user_makes_are_refused_before_any_work(tmp_path, run_import, capsys):
    lvis = ts.write_lvis(str(tmp_path / "lvis"))
    rc, _, _ = run_import("coco", "--ann", lvis["ann"], "--images", lvis["images"])
    err = capsys.readouterr().err
    assert rc == 2 and "an LVIS file" in err and "use chatrex data import lvis" in err
    llava = ts.write_llava(str(tmp_path / "llava"))
    from chatrex.datasets.cli import main

    rc = main(["import", "llava", "--json", llava["json"], "--images", llava["images"], "--out", llava["json"], "--no-progress"])
    assert rc == 2 and "is the source file" in capsys.readouterr().err
    assert json.load(open(llava["json"]))  # the download is untouched
    rc = main(["import", "llava", "--json", llava["json"], "--images", llava["images"], "--out", str(tmp_path), "--no-progress"])
    assert rc == 2 and "is a folder" in capsys.readouterr().err
    coco = ts.write_coco(str(tmp_path / "coco"))
    rc, _, _ = run_import("coco", "--ann", os.path.dirname(coco["ann"]), "--images", coco["images"])
    assert rc == 2 and "is a folder; give the JSON file" in capsys.readouterr().err


def test_a_split_that_contradicts_the_file_name_is_refused_and_refer_without_split_says_so(tmp_path, run_import, capsys):
    mdetr = ts.write_mdetr(str(tmp_path / "m"), "refcoco", "val")
    rc, _, _ = run_import("refcoco", "--format", "mdetr", mdetr["src"], "--split", "testA", "--images", mdetr["images"])
    assert rc == 2 and "--split testA contradicts the file name" in capsys.readouterr().err
    refer = ts.write_refer(str(tmp_path / "r"))
    rc, records, _ = run_import("refcoco", "--format", "refer", refer["pickle"], "--dataset", "refcoco", "--images", refer["images"])
    assert rc == 0 and "no --split: train sentences kept" in capsys.readouterr().out
