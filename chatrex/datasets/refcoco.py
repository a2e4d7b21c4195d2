"""RefCOCO / RefCOCO+ / RefCOCOg: the sentence reader the benchmark uses, and the importer.

``iter_sentences`` yields one :class:`RefSentence` per referring sentence (box in pixel xyxy
floats) from any of four formats (see ``refexp``): ``mdetr``, ``refer``, ``parquet``,
``jsonl``. The importer groups the sentences by image: one record per image, one region per
referred object, one ``referring`` query per sentence.

When the dataset and split are known (arguments, or read from the file name) the sentence
count is compared with the published UNC/UMD split (``refcoco_splits.KNOWN_COUNTS``) and a
``UserWarning`` says when the file holds objects instead of sentences, or a subset.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterator

from .categories import categories_sidecar, coco_prompt_name
from .files import image_size
from .refcoco_splits import DATASETS, count_warnings, guess_dataset_split
from .refexp import OnBad, RefSentence, read_jsonl_sentences, read_mdetr, read_parquet, read_refer
from .sink import ImportSummary, RecordSink

FORMATS = ("mdetr", "refer", "parquet", "jsonl")

__all__ = ["FORMATS", "RefSentence", "iter_sentences", "import_refcoco"]


def _raise_bad(where: str, reason: str, kind: str) -> None:
    raise ValueError(f"{where}: {reason}")


def _iter(fmt: str, src: str, images: str, dataset: str | None, split: str | None, split_by: str | None,
          on_bad: OnBad, meta: dict) -> Iterator[RefSentence]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown RefCOCO format {fmt!r}; expected one of {FORMATS}")
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    g_dataset, g_split, g_split_by = guess_dataset_split(src)
    dataset = dataset or g_dataset
    if fmt != "refer":  # a refer pickle holds every split; its file name says nothing
        for flag, given, named in (("dataset", dataset, g_dataset), ("split", split, g_split)):
            if given is not None and named is not None and given != named:  # relabelling val as testA
                raise ValueError(f"--{flag} {given} contradicts the file name {os.path.basename(src)} ({named})")
        split = split or g_split
    split_by = split_by or g_split_by
    meta.update(dataset=dataset, split=split, split_by=split_by)
    if fmt == "mdetr":
        reader = read_mdetr(src, images, split, on_bad, meta)
    elif fmt == "refer":
        reader = read_refer(src, images, split, on_bad, meta, dataset=dataset, split_by=split_by)
    elif fmt == "parquet":
        reader = read_parquet(src, images, split, on_bad, meta)
    else:
        reader = read_jsonl_sentences(src, images, split, on_bad, meta)
    counts: dict = {}
    for s in reader:
        n, objects = counts.setdefault(s.split, [0, set()])
        counts[s.split][0] = n + 1
        objects.add((s.image_id, s.ann_id) if s.ann_id is not None else (s.image_id, tuple(s.box)))
        yield s
    for message in count_warnings(dataset, meta.get("split_by"), {k: (n, len(o)) for k, (n, o) in counts.items()}):
        warnings.warn(message, UserWarning, stacklevel=3)


def iter_sentences(fmt: str, src: str, images: str, dataset: str | None = None, split: str | None = None,
                   split_by: str | None = None, *, on_bad: OnBad | None = None) -> Iterator[RefSentence]:
    """Yield the referring sentences of a RefCOCO/+/g file, in file order.

    Args:
        fmt: "mdetr" (``finetune_refcoco*_<split>.json``), "refer" (``refs(<split_by>).p`` with
            ``instances.json`` next to it, or their folder), "parquet" (lmms-lab file or
            folder) or "jsonl" (Qwen/InternVL lines).
        src: the file (or folder, for refer and parquet).
        images: the COCO image folder (train2014 names, or 2017 names in ``train2017``/``val2017``);
            for parquet, the folder the embedded images are written to (once, by ``file_name``).
        dataset: "refcoco", "refcoco+" or "refcocog"; read from the path when None.
        split: keep only this split (refer); the split of the file otherwise (read from the
            file name when None).
        split_by: "unc", "umd" or "google" (refer: which pickle in a folder; default unc for
            RefCOCO/RefCOCO+, umd for RefCOCOg).
        on_bad: ``on_bad(where, reason, kind)`` for each row that cannot be read (a degenerate
            box, a missing annotation, an empty sentence); by default such a row raises
            ``ValueError`` naming the file and row, so a benchmark never silently scores fewer
            sentences.

    Boxes are pixel xyxy floats, checked against the image size (clipped within 1 px).
    Warns (``UserWarning``) at the end when the known published split has another count.
    """
    return _iter(fmt, src, images, dataset, split, split_by, on_bad or _raise_bad, {})


def _record_size(s: RefSentence) -> tuple[int | None, int | None]:
    if s.width is not None and s.height is not None:
        return s.width, s.height
    try:
        return image_size(s.image) if os.path.isfile(s.image) else (None, None)
    except ValueError:
        return None, None


def import_refcoco(fmt: str, src: str, images: str, out: str, *, dataset: str | None = None, split: str | None = None,
                   split_by: str | None = None, strict: bool = False, progress: bool = True) -> ImportSummary:
    """Sentences of ``src`` grouped into one record per image -> ``out``.

    Regions: one per referred object (``box`` pixel xyxy, ``annotation_id``, ``ref_id``,
    ``category_id`` and ``category`` when the source has them). Queries: one per sentence,
    ``{"type": "referring", "text", "targets": [region], "sent_id", "ref_id", "split"}``.
    The categories sidecar is written when the source has a categories list (refer, mdetr).
    """
    meta: dict = {}
    guessed = dataset or guess_dataset_split(src)[0]
    if guessed is None:
        raise ValueError(f"{src}: cannot tell RefCOCO, RefCOCO+ or RefCOCOg from the path; pass --dataset")
    if fmt == "parquet":
        os.makedirs(images, exist_ok=True)
    elif not os.path.isdir(images):
        raise FileNotFoundError(f"{images}: no such image folder")
    groups: dict = {}  # image id -> (record, {object key: region index})
    with RecordSink(out, guessed, strict=strict, progress=progress, unit="sent") as sink:
        for s in _iter(fmt, src, images, guessed, split, split_by, sink.bad, meta):
            sink.tick()
            if fmt == "refer" and split is None:  # say so: a training file would hold val/test sentences
                sink.note(f"no --split: {s.split} sentences kept")
            key = (type(s.image_id).__name__, s.image_id)
            if key not in groups:
                width, height = _record_size(s)
                record = {"id": f"{guessed}/{s.image_id}", "image": s.image}
                if width is not None and height is not None:
                    record.update(width=width, height=height)
                record.update(regions=[], queries=[], source={
                    "dataset": guessed, "image_id": s.image_id, "file_name": os.path.basename(s.image), "format": fmt})
                if meta.get("split_by"):
                    record["source"]["split_by"] = meta["split_by"]
                groups[key] = (record, {}, [])
            record, index, wheres = groups[key]
            obj = ("ann", s.ann_id) if s.ann_id is not None else ("box", tuple(s.box))
            if obj not in index:
                index[obj] = len(record["regions"])
                record["regions"].append(_region(s, meta))
            query = {"type": "referring", "text": s.text, "targets": [index[obj]], "sent_id": s.sent_id}
            if s.ref_id is not None:
                query["ref_id"] = s.ref_id
            if s.split is not None:
                query["split"] = s.split
            record["queries"].append(query)
            wheres.append(s.sent_id)
        for record, _, sent_ids in groups.values():
            sink.write(record, f"{src}: image {record['source']['image_id']!r} (sentences {sent_ids[:5]!r}…)",
                       sentences=len(record["queries"]))
        if meta.get("categories"):
            sink.sidecar("categories.json", categories_sidecar(meta["categories"], coco_prompt_name))
        return sink.finish()


def _region(s: RefSentence, meta: dict) -> dict:
    region = {"box": s.box}
    if s.category_id is not None:
        region["category_id"] = s.category_id
        names = meta.setdefault("_names", {c.get("id"): c.get("name") for c in meta.get("categories") or []
                                           if isinstance(c, dict) and isinstance(c.get("id"), (int, str))})
        name = names.get(s.category_id) if isinstance(s.category_id, (int, str)) else None
        if isinstance(name, str) and name:
            region["category"] = name
    if s.ann_id is not None:
        region["annotation_id"] = s.ann_id
    if s.ref_id is not None:
        region["ref_id"] = s.ref_id
    return region
