"""RefCOCO importers and ``iter_sentences`` in all four formats; the restricted unpickler."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import pytest

from chatrex.datasets import sidecar_path
from chatrex.datasets.cli import main
from chatrex.datasets.refcoco import RefSentence, iter_sentences
from chatrex.datasets.refcoco_splits import count_warnings, guess_dataset_split
from chatrex.datasets.safe_pickle import load_plain_pickle
from data_engine.schema import validate_record
from tests.datasets import tiny_sources as ts
from tests.datasets.helpers import assert_box, xyxy


def _queries(records):
    """sent_id -> (record, query, target region)."""
    return {q["sent_id"]: (rec, q, rec["regions"][q["targets"][0]]) for rec in records for q in rec["queries"]}


def test_refer_import_keeps_ids_and_sentences(tmp_path, run_import):
    src = ts.write_refer(str(tmp_path / "src"))
    rc, records, out = run_import("refcoco", "--format", "refer", src["pickle"], "--images", src["images"])
    assert rc == 0
    queries = _queries(records)
    n_sent = 0
    for ref in src["refs"]:
        image_id, cat, bbox = src["anns"][ref["ann_id"]]
        for s in ref["sentences"]:
            n_sent += 1
            rec, q, region = queries[s["sent_id"]]
            assert q["text"] == s["sent"] and q["type"] == "referring"
            assert q["ref_id"] == ref["ref_id"] and q["split"] == ref["split"]
            assert rec["id"] == f"refcoco/{image_id}" and rec["source"]["image_id"] == image_id
            assert rec["source"]["file_name"] == f"COCO_train2014_{image_id:012d}.jpg"  # _<ann_id> stripped
            assert_box(region["box"], xyxy(bbox))
            assert region["annotation_id"] == ref["ann_id"] and region["category_id"] == cat
    assert len(queries) == n_sent
    # ann 1002 is referred to by a val and a train ref: one region, two ref ids on the queries
    rec42 = next(r for r in records if r["source"]["image_id"] == 42)
    assert [r["annotation_id"] for r in rec42["regions"]] == [1001, 1002]
    assert rec42["regions"][0]["category"] == "dog"
    for rec in records:
        validate_record(rec)
        assert os.path.isfile(rec["image"]) and rec["source"]["split_by"] == "unc"
    with open(sidecar_path(out, "categories.json")) as f:
        assert [c["id"] for c in json.load(f)] == [1, 18, 90]


def test_refer_folder_and_split(tmp_path, run_import):
    src = ts.write_refer(str(tmp_path / "src"))
    rc, records, _ = run_import("refcoco", "--format", "refer", src["folder"], "--split-by", "unc", "--split", "val",
                                "--images", src["images"])
    assert rc == 0
    assert sorted(_queries(records)) == [11, 12, 13]


def test_mdetr_import(tmp_path, run_import):
    src = ts.write_mdetr(str(tmp_path / "src"), dataset="refcoco+", split="testA")
    rc, records, _ = run_import("refcoco", "--format", "mdetr", src["src"], "--images", src["images"])
    assert rc == 0
    queries = _queries(records)
    assert sorted(queries) == [n for n, *_ in src["sentences"]]
    for n, image_id, ann_id, text, bbox in src["sentences"]:
        rec, q, region = queries[n]
        assert rec["id"] == f"refcoco+/{image_id}" and rec["source"]["dataset"] == "refcoco+"
        assert q["text"] == text and q["split"] == "testA" and region["annotation_id"] == ann_id
        assert_box(region["box"], xyxy(bbox))


def test_parquet_import_explodes_answers_and_writes_images_once(tmp_path, run_import):
    src = ts.write_refcoco_parquet(str(tmp_path / "src"))
    images = tmp_path / "imgs"
    rc, records, _ = run_import("refcoco", "--format", "parquet", src["src"], "--images", str(images))
    assert rc == 0
    assert sorted(os.listdir(images)) == ["COCO_train2014_000000000042.jpg", "COCO_train2014_000000000073.jpg"]
    queries = _queries(records)
    assert len(queries) == sum(len(a) for *_, a in src["rows"])
    for qid, image_id, bbox, answers in src["rows"]:
        for k, text in enumerate(answers):
            rec, q, region = queries[f"{qid}#{k}"]
            assert q["text"] == text and rec["source"]["image_id"] == image_id
            assert_box(region["box"], xyxy(bbox))
    mtime = os.path.getmtime(images / "COCO_train2014_000000000042.jpg")
    rc, again, _ = run_import("refcoco", "--format", "parquet", src["src"], "--images", str(images), out="again.jsonl")
    assert again == records and os.path.getmtime(images / "COCO_train2014_000000000042.jpg") == mtime


def test_jsonl_import(tmp_path, run_import):
    src = ts.write_refcoco_jsonl(str(tmp_path / "src"))
    rc, records, _ = run_import("refcoco", "--format", "jsonl", src["src"], "--images", src["images"])
    assert rc == 0
    queries = _queries(records)
    assert sorted(queries, key=str) == [0, 2, "s-77"]
    for key, line in zip([0, "s-77", 2], src["lines"]):
        rec, q, region = queries[key]
        assert q["text"] == line["sent"] and region["box"] == [float(v) for v in line["bbox"]]
        assert rec["source"]["dataset"] == "refcoco" and q["split"] == "testA"
    assert len(records) == 2 and len(records[0]["regions"]) == 1  # both sentences on one object


@pytest.mark.parametrize("fmt", ["mdetr", "refer", "parquet", "jsonl"])
def test_iter_sentences_fields(tmp_path, fmt):
    d = str(tmp_path / "src")
    if fmt == "mdetr":
        src = ts.write_mdetr(d)
        args, first = (src["src"], src["images"]), dict(sent_id=0, image_id=42, ann_id=1001, category_id=18, ref_id=None, split="val")
        box, text, size = xyxy(src["sentences"][0][4]), "dog on left", (64, 48)
    elif fmt == "refer":
        src = ts.write_refer(d)
        args, first = (src["pickle"], src["images"]), dict(sent_id=11, image_id=42, ann_id=1001, category_id=18, ref_id=5, split="val")
        box, text, size = xyxy(src["anns"][1001][2]), "dog on left", (64, 48)
    elif fmt == "parquet":
        src = ts.write_refcoco_parquet(d)
        args, first = (src["src"], str(tmp_path / "imgs")), dict(sent_id="q0#0", image_id=42, ann_id=None, category_id=None, ref_id=None, split="val")
        box, text, size = xyxy(src["rows"][0][2]), "dog on left", (64, 48)
    else:
        src = ts.write_refcoco_jsonl(d)
        args, first = (src["src"], src["images"]), dict(sent_id=0, image_id=73, ann_id=None, category_id=None, ref_id=None, split="testA")
        box, text, size = [5.0, 5.0, 45.0, 45.0], "big dog", (80, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny files are "subsets" of the published splits
        sents = list(iter_sentences(fmt, *args, dataset="refcoco"))
    s = sents[0]
    assert isinstance(s, RefSentence)
    for key, value in first.items():
        assert getattr(s, key) == value, key
    assert s.text == text and (s.width, s.height) == size and os.path.isfile(s.image) and os.path.isabs(s.image)
    assert_box(s.box, box)
    assert all(isinstance(v, float) for v in s.box)


def test_iter_sentences_warns_on_subset_and_raises_on_bad_rows(tmp_path):
    src = ts.write_mdetr(str(tmp_path / "src"))
    with pytest.warns(UserWarning, match="full UNC split has 10834 sentences"):
        list(iter_sentences("mdetr", src["src"], src["images"]))
    lines = tmp_path / "refcoco_val.jsonl"
    lines.write_text(json.dumps({"image": "COCO_train2014_000000000042.jpg", "sent": "x", "bbox": [5, 5, 5, 9]}) + "\n")
    with pytest.raises(ValueError, match=r"refcoco_val\.jsonl:1: degenerate box"):
        list(iter_sentences("jsonl", str(lines), src["images"]))
    bad = []
    assert list(iter_sentences("jsonl", str(lines), src["images"], on_bad=lambda *a: bad.append(a))) == []
    assert bad[0][2] == "degenerate box"


def test_split_counts_and_names():
    assert "one line per object" in count_warnings("refcoco", None, {"val": (3811, 3811)})[0]
    assert count_warnings("refcocog", "umd", {"test": (9602, 5023)}) == []
    assert count_warnings("refcocog", "google", {"val": (10, 5)}) == []  # not the published split: no reference
    assert guess_dataset_split("/d/mdetr/finetune_refcoco+_testA.json") == ("refcoco+", "testA", None)
    assert guess_dataset_split("/d/RefCOCOg/data/test-00000-of-00002.parquet")[:2] == ("refcocog", "test")
    assert guess_dataset_split("/d/refer/data/refcoco/refs(unc).p") == ("refcoco", None, "unc")


def test_malicious_pickle_is_refused_by_the_cli(tmp_path, capsys):
    src = ts.write_refer(str(tmp_path / "src"))
    path = str(tmp_path / "refcoco" / "refs(unc).p")
    marker = ts.write_malicious_pickle(path)
    rc = main(["import", "refcoco", "--format", "refer", path, "--images", src["images"],
               "--out", str(tmp_path / "out.jsonl"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("chatrex data import: error: ")
    assert "unsafe pickle" in err and "exec" in err
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "out.jsonl")


def test_plain_pickle_loader_refuses_non_plain_types(tmp_path):
    ok = tmp_path / "ok.p"
    # protocol 3: protocol 2 writes Python 3 bytes through a global (_codecs.encode), refused too
    ok.write_bytes(pickle.dumps([{"a": (1, 2.5, None, True, b"x", "s")}], protocol=3))
    assert load_plain_pickle(ok) == [{"a": (1, 2.5, None, True, b"x", "s")}]
    for name, obj in (("set.p", [{1, 2}]), ("bytearray.p", [bytearray(b"x")])):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(obj, protocol=5))
        with pytest.raises(ValueError, match="unsafe pickle"):
            load_plain_pickle(path)
    junk = tmp_path / "junk.p"
    junk.write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_plain_pickle(junk)


def test_python2_refer_strings_decode_as_utf8(tmp_path):
    # what Python 2's cPickle wrote for [{"sent": "café"}]: SHORT_BINSTRING byte strings
    path = tmp_path / "py2.p"
    path.write_bytes(b"\x80\x02]}U\x04sentU\x05caf\xc3\xa9sa.")
    assert load_plain_pickle(path) == [{"sent": "café"}]
