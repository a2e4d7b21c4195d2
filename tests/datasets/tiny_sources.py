"""Tiny fixtures of every source format ``chatrex data import`` reads, written to a folder.

No downloads: the images are small generated JPEGs (PNG bytes for none). Every function takes
the folder to write into and returns a dict of paths named like the importer's options
(``ann``, ``images``, ``src``, ...), plus what a test needs to compare against. The
annotations are synthetic but follow the real files' layout (docs in
chatrex/datasets/*.py): boxes are xywh where the source uses xywh, xyxy where it uses xyxy.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle

from PIL import Image

SIZES = {42: (64, 48), 73: (80, 60), 139: (50, 40)}  # COCO image id -> (width, height)


def _jpeg(width: int, height: int, seed: int = 0) -> bytes:
    im = Image.new("RGB", (width, height), ((37 * seed) % 256, (91 * seed) % 256, (53 * seed) % 256))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _write_image(path: str, width: int, height: int, seed: int = 0) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(_jpeg(width, height, seed))
    return path


def _dump(path: str, obj) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return path


def write_coco(dir: str) -> dict:
    """COCO instances JSON ``instances_val2017.json`` + ``val2017/`` images.

    Three images (ids 42, 73, 139; 139 has no annotations), categories with gapped ids
    1, 18, 90, four annotations with fractional xywh boxes, one of them ``iscrowd: 1``.
    Returns ``{"ann", "images", "data"}`` (``data``: the JSON as written).
    """
    images = os.path.join(dir, "val2017")
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h} for i, (w, h) in SIZES.items()],
        "annotations": [
            {"id": 7, "image_id": 42, "category_id": 18, "bbox": [10.5, 5.25, 20.0, 15.5], "area": 310.0, "iscrowd": 0},
            {"id": 8, "image_id": 42, "category_id": 1, "bbox": [0.0, 0.0, 64.0, 48.0], "area": 3072.0, "iscrowd": 1,
             "segmentation": {"counts": [0, 3072], "size": [48, 64]}},
            {"id": 9, "image_id": 73, "category_id": 90, "bbox": [30.0, 20.0, 49.5, 39.75], "area": 1967.6, "iscrowd": 0},
            {"id": 11, "image_id": 73, "category_id": 18, "bbox": [1.0, 2.0, 3.0, 4.0], "area": 12.0, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 18, "name": "dog", "supercategory": "animal"},
                       {"id": 90, "name": "toothbrush", "supercategory": "indoor"}],
    }
    for i, (w, h) in SIZES.items():
        _write_image(os.path.join(images, f"{i:012d}.jpg"), w, h, i)
    return {"ann": _dump(os.path.join(dir, "annotations", "instances_val2017.json"), data), "images": images, "data": data}


def write_objects365(dir: str) -> dict:
    """Objects365-style ``zhiyuan_objv2_val.json`` + images.

    Image 1 is named ``images/v1/patch8/objects365_v1_00000001.jpg`` and lies at
    ``DIR/patch8/…`` (the usual layout); image 2 (``images/v2/patch16/…``) lies only under its
    full relative path. Raw names need cleaning: ``"Cigar/Cigarette "``, ``"Formula 1 "``,
    ``"SUV"``, ``"Person"``. Returns ``{"ann", "images", "data"}``.
    """
    images = os.path.join(dir, "val")
    data = {
        "images": [{"id": 1, "file_name": "images/v1/patch8/objects365_v1_00000001.jpg", "width": 64, "height": 48},
                   {"id": 2, "file_name": "images/v2/patch16/objects365_v2_00000002.jpg", "width": 80, "height": 60}],
        "annotations": [
            {"id": 100, "image_id": 1, "category_id": 3, "bbox": [4.0, 4.0, 10.0, 10.0], "area": 100.0, "iscrowd": 0},
            {"id": 101, "image_id": 2, "category_id": 5, "bbox": [5.0, 6.0, 20.0, 30.0], "area": 600.0, "iscrowd": 0},
            {"id": 102, "image_id": 2, "category_id": 1, "bbox": [40.0, 10.0, 10.0, 10.0], "area": 100.0, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "Person"}, {"id": 3, "name": "Cigar/Cigarette "},
                       {"id": 5, "name": "Formula 1 "}, {"id": 7, "name": "SUV"}],
    }
    _write_image(os.path.join(images, "patch8", "objects365_v1_00000001.jpg"), 64, 48, 1)
    _write_image(os.path.join(images, "images", "v2", "patch16", "objects365_v2_00000002.jpg"), 80, 60, 2)
    return {"ann": _dump(os.path.join(dir, "zhiyuan_objv2_val.json"), data), "images": images, "data": data}


def write_lvis(dir: str) -> dict:
    """LVIS v1-style ``lvis_v1_val.json`` + COCO images under ``DIR/coco``.

    Image 42 has ``coco_url`` only (file in ``coco/val2017/``), image 73 has ``coco_url`` only
    with its file directly in ``coco/``, image 139 has a ``file_name``. Images carry
    ``neg_category_ids``/``not_exhaustive_category_ids``; categories ``frequency``,
    ``synonyms`` and an underscore/sense name ``bow_(weapon)``. Returns ``{"ann", "images", "data"}``.
    """
    root = os.path.join(dir, "coco")
    url = "http://images.cocodataset.org/{}/{:012d}.jpg"
    data = {
        "images": [
            {"id": 42, "coco_url": url.format("val2017", 42), "width": 64, "height": 48,
             "neg_category_ids": [3, 77], "not_exhaustive_category_ids": [12]},
            {"id": 73, "coco_url": url.format("train2017", 73), "width": 80, "height": 60,
             "neg_category_ids": [], "not_exhaustive_category_ids": [3]},
            {"id": 139, "file_name": "val2017/000000000139.jpg", "coco_url": url.format("val2017", 139),
             "width": 50, "height": 40, "neg_category_ids": [12], "not_exhaustive_category_ids": []},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 12, "bbox": [1.5, 2.5, 30.0, 20.0], "area": 600.0},
            {"id": 2, "image_id": 73, "category_id": 3, "bbox": [10.0, 10.0, 15.25, 12.75], "area": 194.4},
            {"id": 3, "image_id": 139, "category_id": 77, "bbox": [0.0, 0.0, 50.0, 40.0], "area": 2000.0},
        ],
        "categories": [
            {"id": 3, "name": "bow_(weapon)", "synonyms": ["bow_(weapon)", "longbow"], "frequency": "r", "synset": "bow.n.04"},
            {"id": 12, "name": "teddy_bear", "synonyms": ["teddy_bear", "teddy"], "frequency": "f", "synset": "teddy.n.01"},
            {"id": 77, "name": "dog", "synonyms": ["dog"], "frequency": "c", "synset": "dog.n.01"},
        ],
    }
    _write_image(os.path.join(root, "val2017", f"{42:012d}.jpg"), 64, 48, 42)
    _write_image(os.path.join(root, f"{73:012d}.jpg"), 80, 60, 73)
    _write_image(os.path.join(root, "val2017", f"{139:012d}.jpg"), 50, 40, 139)
    return {"ann": _dump(os.path.join(dir, "lvis_v1_val.json"), data), "images": root, "data": data}


def _train2014(dir: str) -> str:
    images = os.path.join(dir, "train2014")
    for i, (w, h) in SIZES.items():
        _write_image(os.path.join(images, f"COCO_train2014_{i:012d}.jpg"), w, h, i)
    return images


REFER_ANNS = {1001: (42, 18, [10.0, 5.0, 20.0, 15.0]), 1002: (42, 1, [30.0, 10.0, 25.5, 30.25]),
              2001: (73, 18, [5.0, 5.0, 40.0, 40.0]), 3001: (139, 90, [2.0, 3.0, 10.0, 12.0])}


def refer_refs() -> list[dict]:
    """The refs list ``write_refer`` pickles: splits val (2 refs), testA, testB and train."""
    spec = [(5, 1001, "val", [(11, "dog on left"), (12, "the brown dog")]),
            (6, 1002, "val", [(13, "person right")]),
            (7, 2001, "testA", [(14, "big dog"), (15, "dog in the middle"), (16, "the dog")]),
            (8, 3001, "testB", [(17, "toothbrush")]),
            (9, 1002, "train", [(18, "a standing person")])]
    refs = []
    for ref_id, ann_id, split, sents in spec:
        image_id, cat, _ = REFER_ANNS[ann_id]
        refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": cat, "split": split,
                     "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg", "sent_ids": [s for s, _ in sents],
                     "sentences": [{"sent_id": s, "sent": t, "raw": t.capitalize() + ".", "tokens": t.split()} for s, t in sents]})
    return refs


def write_refer(dir: str) -> dict:
    """The refer toolkit's ``refcoco/refs(unc).p`` (protocol-2 pickle of plain dicts) and
    ``refcoco/instances.json``, with COCO ``train2014/`` images.
    Returns ``{"pickle", "folder", "images", "refs", "anns"}`` (``anns``: ann id -> (image id,
    category id, xywh))."""
    folder = os.path.join(dir, "refcoco")
    os.makedirs(folder, exist_ok=True)
    instances = {
        "images": [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": w, "height": h} for i, (w, h) in SIZES.items()],
        "annotations": [{"id": a, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                        for a, (i, c, b) in REFER_ANNS.items()],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 18, "name": "dog", "supercategory": "animal"},
                       {"id": 90, "name": "toothbrush", "supercategory": "indoor"}],
    }
    _dump(os.path.join(folder, "instances.json"), instances)
    path = os.path.join(folder, "refs(unc).p")
    refs = refer_refs()
    with open(path, "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return {"pickle": path, "folder": folder, "images": _train2014(dir), "refs": refs, "anns": REFER_ANNS}


def write_mdetr(dir: str, dataset: str = "refcoco", split: str = "val") -> dict:
    """MDETR ``finetune_<dataset>_<split>.json``: one ``images`` entry per sentence (ids 0..),
    ``original_id`` = COCO image id, one annotation each with ``original_id`` = COCO ann id.
    Uses the refs of ``split`` from ``refer_refs`` (falls back to all refs). Returns
    ``{"src", "images", "sentences"}`` (``sentences``: [(id, coco image id, ann id, text, xywh)])."""
    refs = [r for r in refer_refs() if r["split"] == split] or refer_refs()
    images, annotations, sentences = [], [], []
    for ref in refs:
        image_id, cat, bbox = REFER_ANNS[ref["ann_id"]]
        w, h = SIZES[image_id]
        for s in ref["sentences"]:
            n = len(images)
            images.append({"id": n, "file_name": f"COCO_train2014_{image_id:012d}.jpg", "height": h, "width": w,
                           "original_id": image_id, "caption": s["sent"], "dataset_name": dataset, "tokens_negative": []})
            annotations.append({"id": n, "image_id": n, "bbox": bbox, "category_id": cat, "area": bbox[2] * bbox[3],
                                "iscrowd": 0, "original_id": ref["ann_id"], "tokens_positive": [[0, 3]]})
            sentences.append((n, image_id, ref["ann_id"], s["sent"], bbox))
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}]}
    src = _dump(os.path.join(dir, "mdetr_annotations", f"finetune_{dataset}_{split}.json"), data)
    return {"src": src, "images": _train2014(dir), "sentences": sentences}


PARQUET_ROWS = [("q0", 42, [10.0, 5.0, 20.0, 15.0], ["dog on left", "the brown dog"]),
                ("q1", 42, [30.0, 10.0, 25.5, 30.25], ["person right"]),
                ("q2", 73, [5.0, 5.0, 40.0, 40.0], ["big dog", "dog in the middle", "the dog"])]


def write_refcoco_parquet(dir: str) -> dict:
    """lmms-lab-style ``RefCOCO/data/val-00000-of-00001.parquet``: 3 rows (one per object)
    with embedded JPEGs, ``answer`` = list of sentences, ``bbox`` xywh. Returns
    ``{"src", "rows"}`` (``rows``: [(question_id, image id, xywh, answers)])."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"question_id": [], "image": [], "question": [], "answer": [], "segmentation": [], "bbox": [], "iscrowd": [], "file_name": []}
    for qid, image_id, bbox, answers in PARQUET_ROWS:
        name = f"COCO_train2014_{image_id:012d}.jpg"
        cols["question_id"].append(qid)
        cols["image"].append({"bytes": _jpeg(*SIZES[image_id], image_id), "path": name})
        cols["question"].append("Please carefully observe the area circled in the image and come up with a caption for the area.")
        cols["answer"].append(answers)
        cols["segmentation"].append([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1]])
        cols["bbox"].append(bbox)
        cols["iscrowd"].append(0)
        cols["file_name"].append(name)
    schema = pa.schema([("question_id", pa.string()),
                        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("question", pa.string()), ("answer", pa.list_(pa.string())),
                        ("segmentation", pa.list_(pa.float32())), ("bbox", pa.list_(pa.float32())),
                        ("iscrowd", pa.int8()), ("file_name", pa.string())])
    path = os.path.join(dir, "RefCOCO", "data", "val-00000-of-00001.parquet")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(cols, schema=schema), path, row_group_size=2)
    return {"src": path, "rows": PARQUET_ROWS}


def write_refcoco_jsonl(dir: str) -> dict:
    """Qwen/InternVL-style ``refcoco_testA.jsonl``: one line per sentence, ``bbox`` pixel xyxy,
    image paths relative to the image folder; the second line carries an ``id``. Returns
    ``{"src", "images", "lines"}``."""
    images = _train2014(dir)
    lines = [{"image": f"COCO_train2014_{73:012d}.jpg", "sent": "big dog", "bbox": [5, 5, 45, 45], "width": 80, "height": 60},
             {"image": f"COCO_train2014_{73:012d}.jpg", "sent": "the dog", "bbox": [5, 5, 45, 45], "width": 80, "height": 60,
              "id": "s-77"},
             {"image": f"train2014/COCO_train2014_{42:012d}.jpg", "sent": "person right", "bbox": [30.0, 10.0, 55.5, 40.25],
              "width": 64, "height": 48}]
    path = os.path.join(dir, "refcoco_testA.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return {"src": path, "images": images, "lines": lines}


def write_llava(dir: str) -> dict:
    """LLaVA-style ``llava_tiny.json`` with images under ``DIR/llava_data``: a row with
    ``<image>`` at the end of its first human turn, one with it at the front, a text-only
    (ShareGPT) row, and a row whose image lies in a second root ``DIR/extra_root``.
    Returns ``{"json", "images", "extra_images", "rows"}``."""
    images, extra = os.path.join(dir, "llava_data"), os.path.join(dir, "extra_root")
    _write_image(os.path.join(images, "coco", "train2017", "000000000042.jpg"), 64, 48, 42)
    _write_image(os.path.join(images, "gqa", "images", "2345.jpg"), 50, 40, 7)
    _write_image(os.path.join(extra, "sam", "sa_1.jpg"), 40, 30, 9)
    rows = [
        {"id": "000042", "image": "coco/train2017/000000000042.jpg",
         "conversations": [{"from": "human", "value": "What is in the picture?\n<image>"},
                           {"from": "gpt", "value": "A red square."},
                           {"from": "human", "value": "And the colour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "gqa_2345", "image": "gqa/images/2345.jpg",
         "conversations": [{"from": "human", "value": "<image>\nDescribe it briefly."}, {"from": "gpt", "value": "A dark tile."}]},
        {"id": "sharegpt_7",
         "conversations": [{"from": "human", "value": "Write a haiku about rain."}, {"from": "gpt", "value": "Soft rain on the roof."}]},
        {"id": "sam_1", "image": "sam/sa_1.jpg",
         "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A tile."}]},
    ]
    return {"json": _dump(os.path.join(dir, "llava_tiny.json"), rows), "images": images, "extra_images": extra, "rows": rows}


REXVERSE_ANNOTATIONS = [
    {"boxes": [{"bbox": [4, 8, 40, 30], "phrase": "a brown dog lying on a blue mat"},
               {"bbox": [42.5, 1.0, 60.0, 20.25], "phrase": "a lamp"}]},
    {"boxes": [{"bbox": [0, 0, 30, 30], "phrase": "the red square"}]},
    {"boxes": []},
]


def write_rexverse(dir: str, annotations: list | None = None) -> dict:
    """Rexverse-style ``image.tsv`` + ``image.tsv.lineidx`` and ``annotation.tsv`` +
    ``annotation.tsv.lineidx`` (IDEA's TSV convention).

    The image TSV starts with a line no index entry points at and holds three images
    (``<key>\\t<base64>``, the second wrapped as ``b'...'``). The annotation TSV also starts
    with an unindexed junk line and lists its annotations in reverse image order, so only
    reading by the ``.lineidx`` offsets gives the right pairs. ``annotations`` replaces the
    default JSON objects (``REXVERSE_ANNOTATIONS``, xyxy boxes). Returns ``{"images", "ann",
    "annotations", "sizes", "keys"}`` with annotation ``n`` pointing at image line ``2 - n``.
    """
    annotations = REXVERSE_ANNOTATIONS if annotations is None else annotations
    sizes = [(30, 20), (40, 32), (64, 48)]
    keys = ["img-a", "img-b", "img-c"]
    img_path, ann_path = os.path.join(dir, "image.tsv"), os.path.join(dir, "annotation.tsv")
    os.makedirs(dir, exist_ok=True)
    offsets = []
    with open(img_path, "wb") as f:
        f.write(b"junk line that no index points at\n")
        for i, ((w, h), key) in enumerate(zip(sizes, keys)):
            offsets.append(f.tell())
            b64 = base64.b64encode(_jpeg(w, h, i + 1))
            f.write(key.encode() + b"\t" + (b"b'" + b64 + b"'" if i == 1 else b64) + b"\n")
    with open(img_path + ".lineidx", "w") as f:
        f.writelines(f"{o}\n" for o in offsets)
    ann_offsets = []
    with open(ann_path, "wb") as f:
        f.write(b"999\t{\"not\": \"indexed\"}\n")
        for n, obj in enumerate(annotations):
            ann_offsets.append(f.tell())
            f.write(f"{offsets[(len(offsets) - 1 - n) % len(offsets)]}\t{json.dumps(obj)}\n".encode())
    with open(ann_path + ".lineidx", "w") as f:
        f.writelines(f"{o}\n" for o in ann_offsets)
    return {"images": img_path, "ann": ann_path, "annotations": annotations, "sizes": sizes, "keys": keys}


def write_vg(dir: str) -> dict:
    """Visual Genome ``region_descriptions.json`` with images in ``VG_100K/`` (image 1) and
    ``VG_100K_2/`` (image 2), and ``image_data.json`` (sizes; image 1 is COCO image 42).
    Returns ``{"regions", "images", "image_data", "data"}``."""
    images = os.path.join(dir, "visual_genome")
    _write_image(os.path.join(images, "VG_100K", "1.jpg"), 80, 60, 1)
    _write_image(os.path.join(images, "VG_100K_2", "2.jpg"), 64, 48, 2)
    data = [
        {"id": 1, "regions": [
            {"region_id": 1382, "image_id": 1, "phrase": "green clock on the tower ", "x": 21, "y": 5, "width": 30, "height": 40},
            {"region_id": 1383, "image_id": 1, "phrase": "a window", "x": 0, "y": 0, "width": 10, "height": 8}]},
        {"id": 2, "regions": [
            {"region_id": 2001, "image_id": 2, "phrase": "white cloud", "x": 10, "y": 10, "width": 20, "height": 15}]},
    ]
    image_data = [{"image_id": 1, "width": 80, "height": 60, "coco_id": 42, "flickr_id": None, "url": "https://example.org/1.jpg"},
                  {"image_id": 2, "width": 64, "height": 48, "coco_id": None, "flickr_id": 7, "url": "https://example.org/2.jpg"}]
    return {"regions": _dump(os.path.join(images, "region_descriptions.json"), data), "images": images,
            "image_data": _dump(os.path.join(images, "image_data.json"), image_data), "data": data}


class _Exploit:
    """Unpickling this would run ``exec`` (writing a marker file) through ``__reduce__``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def write_malicious_pickle(path: str, marker: str | None = None) -> str:
    """A ``refs(unc).p``-looking pickle whose loading would call ``builtins.exec`` to create
    ``marker`` (default ``<path>.pwned``), next to a valid ``instances.json``. Returns the
    marker path; a safe loader never creates it."""
    marker = marker or f"{path}.pwned"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump([{"ref_id": 1, "payload": _Exploit(marker)}], f, protocol=2)
    _dump(os.path.join(os.path.dirname(os.path.abspath(path)), "instances.json"), {"images": [], "annotations": [], "categories": []})
    return marker
