"""Readers of the four RefCOCO/+/g formats, one referring sentence at a time.

Each reader yields :class:`RefSentence` (box in pixel xyxy floats, checked against the image
size) and hands every row it cannot read to ``on_bad(where, reason, kind)``. ``meta`` receives
what the importer needs besides sentences (the ``categories`` list when the source has one).
``chatrex.datasets.refcoco.iter_sentences`` is the public entry point.

* mdetr: ``finetune_refcoco*_<split>.json``, one ``images`` entry per sentence (``caption``,
  ``original_id`` = COCO image id) with its one annotation (``bbox`` xywh, ``original_id`` =
  COCO annotation id).
* refer: ``refs(<split_by>).p`` (loaded by the data-only unpickler) + ``instances.json`` next to
  it; the box is the instance annotation ``ann_id`` (xywh).
* parquet: lmms-lab/RefCOCO rows, one per object (``bbox`` xywh, ``answer`` = its sentences,
  embedded ``image``); each answer entry becomes one sentence ``"<question_id>#<k>"``.
* jsonl: Qwen-VL/InternVL lines ``{"image", "sent", "bbox": [x1, y1, x2, y2], "width",
  "height"}`` (pixel xyxy).
"""

from __future__ import annotations

import glob
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterator

from chatrex.utils.jsonl import read_jsonl

from .boxes import as_xyxy, checked_box, xywh_to_xyxy
from .coco import load_coco_json
from .files import ImageLocator, coco_image_candidates, coco_image_id_from_name, image_size, write_once
from .safe_pickle import load_plain_pickle
from .sink import BadRow

OnBad = Callable[[str, str, str], None]  # (where, reason, kind)
_REFER_NAME_RE = re.compile(r"^(COCO_[A-Za-z]+\d{4}_\d{12})_\d+(\.\w+)$")


@dataclass
class RefSentence:
    """One referring sentence and its ground-truth object."""

    sent_id: str | int  # refer sent_id, mdetr images[].id, parquet "<question_id>#<k>", jsonl id or 0-based line
    image_id: int | str  # COCO image id when known, else the image path
    image: str  # absolute path of the image file
    text: str
    box: list[float]  # pixel xyxy floats
    width: int | None = None
    height: int | None = None
    ann_id: int | None = None
    ref_id: int | None = None
    category_id: int | None = None
    split: str | None = None


def _size(path: str, exists: bool, width, height) -> tuple[int | None, int | None]:
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0  # noqa: E731
    if ok(width) and ok(height):
        return width, height
    if exists:
        try:
            return image_size(path)
        except ValueError as err:
            raise BadRow("unreadable image", f"{path}: {err}") from None
    return None, None


def _sentence(text, box, width, height, **fields) -> RefSentence:
    if not isinstance(text, str) or not text.strip():
        raise BadRow("empty sentence", f"sentence must be a non-empty string, got {text!r}")
    box, _ = checked_box(box, width, height)
    return RefSentence(text=text, box=box, width=width, height=height, **fields)


def read_mdetr(src: str, images: str, split: str | None, on_bad: OnBad, meta: dict) -> Iterator[RefSentence]:
    data = load_coco_json(src)
    meta["categories"] = data["categories"]
    anns = defaultdict(list)
    for ann in data["annotations"]:
        if isinstance(ann, dict) and isinstance(ann.get("image_id"), (int, str)):
            anns[ann["image_id"]].append(ann)
    locate = ImageLocator()
    for i, img in enumerate(data["images"]):
        where = f"{src}: images[{i}]"
        try:
            if not isinstance(img, dict) or not isinstance(img.get("id"), (int, str)):
                raise BadRow("malformed image", f"image entry without an id: {str(img)[:200]}")
            where += f" (id {img['id']!r})"
            own = anns.get(img["id"], [])
            if len(own) != 1:
                raise BadRow("annotation count", f"{len(own)} annotations for this sentence (expected 1)")
            ann = own[0]
            name = img.get("file_name")
            if not isinstance(name, str) or not name:
                raise BadRow("malformed image", f"no file_name (got {name!r})")
            path, exists = locate(coco_image_candidates(images, name))
            width, height = _size(path, exists, img.get("width"), img.get("height"))
            s = _sentence(img.get("caption"), xywh_to_xyxy(ann.get("bbox")), width, height,
                          sent_id=img["id"], image_id=img.get("original_id", path), image=path,
                          ann_id=ann.get("original_id"), ref_id=img.get("ref_id"),
                          category_id=ann.get("category_id"), split=split)
        except BadRow as err:
            on_bad(where, str(err), err.kind)
            continue
        yield s


def refer_paths(src: str, dataset: str | None, split_by: str | None) -> tuple[str, str, str | None]:
    """``(refs pickle, instances.json, split_by)`` from a pickle path or a refer folder."""
    if os.path.isdir(src):
        folder = src
        by = split_by or {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}.get(dataset or "")
        pickle_path = os.path.join(folder, f"refs({by}).p") if by else None
        if pickle_path is None or not os.path.isfile(pickle_path):
            found = sorted(glob.glob(os.path.join(glob.escape(folder), "refs(*).p")))
            if split_by is None and len(found) == 1:
                pickle_path = found[0]
            else:
                names = ", ".join(os.path.basename(f) for f in found) or "none"
                raise FileNotFoundError(f"{folder}: no refs({by or '<split_by>'}).p (found: {names}); pass --split-by")
    else:
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{src}: no such file")
        pickle_path, folder = src, os.path.dirname(src)
    if split_by is None:
        m = re.match(r"refs\((\w+)\)\.p$", os.path.basename(pickle_path))
        split_by = m.group(1) if m else None
    instances = os.path.join(folder, "instances.json")
    return pickle_path, instances, split_by


def _refer_file_name(ref: dict, img: dict | None) -> str:
    """refer's ``file_name`` carries ``_<ann_id>`` after the COCO name: strip it."""
    name = ref.get("file_name")
    if isinstance(name, str):
        m = _REFER_NAME_RE.match(name)
        if m:
            return m.group(1) + m.group(2)
    if img and isinstance(img.get("file_name"), str):
        return img["file_name"]
    if isinstance(name, str) and name:
        return name
    raise BadRow("malformed ref", f"no usable file_name (got {name!r})")


def read_refer(src: str, images: str, split: str | None, on_bad: OnBad, meta: dict, dataset: str | None = None,
               split_by: str | None = None) -> Iterator[RefSentence]:
    pickle_path, instances_path, meta["split_by"] = refer_paths(src, dataset, split_by)
    refs = load_plain_pickle(pickle_path)  # before anything else reads the folder
    if not isinstance(refs, list):
        raise ValueError(f"{pickle_path}: expected a list of refs, got {type(refs).__name__}")
    inst = load_coco_json(instances_path)
    meta["categories"] = inst["categories"]
    anns = {a["id"]: a for a in inst["annotations"] if isinstance(a, dict) and isinstance(a.get("id"), int)}
    imgs = {m["id"]: m for m in inst["images"] if isinstance(m, dict) and isinstance(m.get("id"), int)}
    locate = ImageLocator()
    for i, ref in enumerate(refs):
        where = f"{pickle_path}: refs[{i}]"
        if not isinstance(ref, dict):
            on_bad(where, f"must be a dict, got {type(ref).__name__}", "malformed ref")
            continue
        where += f" (ref_id {ref.get('ref_id')!r})"
        if split is not None and ref.get("split") != split:
            continue
        try:
            ann = anns.get(ref.get("ann_id")) if isinstance(ref.get("ann_id"), int) else None
            if ann is None:
                raise BadRow("unknown ann_id", f"ann_id {ref.get('ann_id')!r} is not in {instances_path}")
            img = imgs.get(ref.get("image_id")) if isinstance(ref.get("image_id"), int) else None
            path, exists = locate(coco_image_candidates(images, _refer_file_name(ref, img)))
            width, height = _size(path, exists, (img or {}).get("width"), (img or {}).get("height"))
            box = xywh_to_xyxy(ann.get("bbox"))
            sentences = ref.get("sentences")
            if not isinstance(sentences, list) or not sentences:
                raise BadRow("malformed ref", "ref without sentences")
        except BadRow as err:
            on_bad(where, str(err), err.kind)
            continue
        for s in sentences:
            s_where = f"{where} sentence {s.get('sent_id')!r}" if isinstance(s, dict) else where
            try:
                if not isinstance(s, dict):
                    raise BadRow("malformed ref", f"sentence must be a dict, got {type(s).__name__}")
                out = _sentence(s.get("sent"), box, width, height, sent_id=s.get("sent_id"),
                                image_id=ref.get("image_id", path), image=path, ann_id=ref["ann_id"],
                                ref_id=ref.get("ref_id"), category_id=ref.get("category_id", ann.get("category_id")),
                                split=ref.get("split"))
            except BadRow as err:
                on_bad(s_where, str(err), err.kind)
                continue
            yield out


def parquet_files(src: str, split: str | None) -> list[str]:
    """``src`` itself, or the ``*.parquet`` files of folder ``src`` (those named
    ``<split>-*.parquet`` when ``split`` is given), sorted."""
    if os.path.isfile(src):
        return [src]
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src}: no such file or folder")
    files = sorted(glob.glob(os.path.join(glob.escape(src), "*.parquet")))
    if split is not None:
        files = [f for f in files if os.path.basename(f).startswith(f"{split}-")]
    if not files:
        raise FileNotFoundError(f"{src}: no {split + '-' if split else ''}*.parquet files")
    return files


def read_parquet(src: str, images: str, split: str | None, on_bad: OnBad, meta: dict) -> Iterator[RefSentence]:
    import pyarrow.parquet as pq

    from .refcoco_splits import guess_dataset_split

    for path in parquet_files(src, split):
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        missing = {"answer", "bbox"} - names
        if missing or not names & {"image", "file_name"}:
            raise ValueError(f"{path}: not an lmms-lab RefCOCO parquet (missing {sorted(missing) or ['image or file_name']}; "
                             f"columns: {sorted(names)})")
        columns = [c for c in ("question_id", "image", "answer", "bbox", "file_name") if c in names]
        file_split = split or guess_dataset_split(path)[1]
        row_index = 0
        # Row-group batches keep at most one batch of embedded images in memory.
        for batch in pf.iter_batches(batch_size=64, columns=columns):
            for row in batch.to_pylist():
                yield from _parquet_row(row, row_index, path, images, file_split, on_bad)
                row_index += 1


def _parquet_row(row: dict, row_index: int, path: str, images: str, split, on_bad: OnBad) -> Iterator[RefSentence]:
    qid = row.get("question_id")
    qid = row_index if qid is None else qid
    where = f"{path}: row {row_index} (question_id {qid!r})"
    try:
        image = row.get("image") or {}
        name = row.get("file_name") or (image.get("path") if isinstance(image, dict) else None) or f"{qid}.jpg"
        dest = os.path.abspath(os.path.join(images, os.path.basename(name)))  # basename: never write outside DIR
        data = image.get("bytes") if isinstance(image, dict) else None
        if data:
            write_once(dest, data)
            try:
                width, height = image_size(data)
            except ValueError as err:
                raise BadRow("unreadable image", f"embedded image: {err}") from None
        elif os.path.isfile(dest):
            width, height = _size(dest, True, None, None)
        else:
            raise BadRow("missing image", f"no embedded image bytes and no {dest}")
        answers = row.get("answer")
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list) or not answers:
            raise BadRow("empty sentence", f"answer must be a non-empty list of sentences, got {answers!r}")
        box = xywh_to_xyxy(row.get("bbox"))
        image_id = coco_image_id_from_name(name)
    except BadRow as err:
        on_bad(where, str(err), err.kind)
        return
    for k, text in enumerate(answers):
        try:
            s = _sentence(text, box, width, height, sent_id=f"{qid}#{k}",
                          image_id=dest if image_id is None else image_id, image=dest, split=split)
        except BadRow as err:
            on_bad(f"{where} answer[{k}]", str(err), err.kind)
            continue
        yield s


def read_jsonl_sentences(src: str, images: str, split: str | None, on_bad: OnBad, meta: dict) -> Iterator[RefSentence]:
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src}: no such file")
    locate = ImageLocator()
    for line_number, row in read_jsonl(src, line_numbers=True):
        where = f"{src}:{line_number}"
        try:
            if not isinstance(row, dict):
                raise BadRow("malformed row", f"must be a JSON object, got {type(row).__name__}")
            name = row.get("image")
            if not isinstance(name, str) or not name:
                raise BadRow("malformed row", f"no image path (got {name!r})")
            cands = [name] if os.path.isabs(name) or not images else [os.path.join(images, name)]
            if images:
                cands.append(os.path.join(images, os.path.basename(name)))
            path, exists = locate(cands)
            width, height = _size(path, exists, row.get("width"), row.get("height"))
            box = as_xyxy(row.get("bbox"))
            sent_id = next((row[k] for k in ("id", "question_id", "sent_id") if row.get(k) is not None), line_number - 1)
            image_id = row.get("image_id")
            if image_id is None:
                image_id = coco_image_id_from_name(name)
            s = _sentence(row.get("sent"), box, width, height, sent_id=sent_id,
                          image_id=path if image_id is None else image_id, image=path,
                          ann_id=row.get("ann_id"), ref_id=row.get("ref_id"),
                          category_id=row.get("category_id"), split=row.get("split", split))
        except BadRow as err:
            on_bad(where, str(err), err.kind)
            continue
        yield s
