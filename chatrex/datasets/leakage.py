"""Keep evaluation images out of training data (docs/training.md, "Training on real data").

COCO 2017 train holds the images of RefCOCO/+/g val and test, and LLaVA-style mixtures reuse
COCO train images; LVIS v1 val overlaps COCO 2017 train too (real_data.md 4.3). A model
trained on them would be evaluated on images it has seen. COCO 2014 and 2017 share image
ids, so one set of COCO image ids describes every held-out image.

* :func:`heldout_image_ids` reads imported evaluation records and returns their COCO ids:
  every record of a COCO-derived dataset (``coco``, ``lvis``) and every RefCOCO/+/g record
  with a query of a split other than ``train`` (a training file passed by mistake then
  removes nothing). Records of other sources (Objects365, Rexverse) carry no COCO id.
* :func:`filter_records` drops training records whose COCO image id is held out, counting
  the removals per dataset. A record's COCO id is ``source.image_id`` for COCO-derived
  datasets, ``source.coco_id`` where an importer kept one (Visual Genome's image_data), and
  otherwise parsed from a COCO file name in ``source.file_name`` or ``image``
  (``.../train2017/000000123456.jpg``, ``COCO_train2014_000000123456.jpg``), which is how
  LLaVA records are matched. Objects365 ids are never COCO ids.

``chatrex data filter-leakage --train IN.jsonl --exclude EVAL.jsonl [...] --out OUT.jsonl``
(:func:`add_parser`, :func:`run`) writes the kept records; ``data.exclude`` in a training
config applies the same filter when training loads its data.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections import Counter
from typing import Iterable, Iterator

from chatrex.utils.atomic import atomic_write
from chatrex.utils.jsonl import read_jsonl

from .sink import sidecar_path

# Datasets whose source.image_id is a COCO image id.
COCO_ID_DATASETS = ("coco", "lvis", "refcoco", "refcoco+", "refcocog")
REFCOCO_DATASETS = ("refcoco", "refcoco+", "refcocog")
# A bare 12-digit name counts only inside a COCO split folder: other datasets number files too.
_COCO_FILE = re.compile(
    r"(?:^|[/\\])(?:COCO_(?:train|val|test)20(?:14|15)_(\d{12})|(?:train|val|test)20(?:14|17)[/\\](\d{12}))\.jpe?g$",
    re.IGNORECASE,
)


def coco_id_from_path(path) -> int | None:
    """The COCO image id in a COCO file name, or None (``train2017/000000000042.jpg`` -> 42)."""
    if not isinstance(path, str):
        return None
    match = _COCO_FILE.search(path)
    if match is None:
        return None
    return int(match.group(1) or match.group(2))


def _int_id(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def dataset_name(record: dict) -> str:
    """``source.dataset``, or ``"unknown"`` for records without one (e.g. synthetic data)."""
    source = record.get("source") if isinstance(record, dict) else None
    name = source.get("dataset") if isinstance(source, dict) else None
    return name if isinstance(name, str) and name else "unknown"


def coco_image_id(record: dict) -> int | None:
    """The COCO image id of the record's image, or None when it is not a COCO image."""
    if not isinstance(record, dict):
        return None
    source = record.get("source") if isinstance(record.get("source"), dict) else {}
    if source.get("dataset") in COCO_ID_DATASETS:
        found = _int_id(source.get("image_id"))
        if found is not None:
            return found
    found = _int_id(source.get("coco_id"))
    if found is not None:
        return found
    if source.get("dataset") == "objects365":
        return None
    for path in (source.get("file_name"), record.get("image")):
        found = coco_id_from_path(path)
        if found is not None:
            return found
    return None


def _splits(record: dict) -> set:
    source = record.get("source") if isinstance(record.get("source"), dict) else {}
    splits = {source.get("split")}
    splits.update(q.get("split") for q in record.get("queries") or [] if isinstance(q, dict))
    return splits - {None}


def is_heldout_record(record: dict) -> bool:
    """Whether an evaluation record's image must stay out of training (see the module doc)."""
    if dataset_name(record) in REFCOCO_DATASETS:
        splits = _splits(record)
        # Without split information the record came from an evaluation file: keep it out.
        return not splits or bool(splits - {"train"})
    return True


def heldout_image_ids(paths: Iterable[str | os.PathLike]) -> set[int]:
    """COCO image ids of the held-out records in the evaluation record files ``paths``."""
    heldout: set[int] = set()
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"evaluation record file {os.fspath(path)!r} does not exist")
        for record in read_jsonl(path):
            image_id = coco_image_id(record)
            if image_id is not None and is_heldout_record(record):
                heldout.add(image_id)
    return heldout


def is_leaked(record: dict, heldout_ids: set[int]) -> bool:
    image_id = coco_image_id(record)
    return image_id is not None and image_id in heldout_ids


class FilteredRecords(Iterator[dict]):
    """Iterator over the kept records; ``removed`` (per dataset) and ``seen`` count as it goes."""

    def __init__(self, records: Iterable[dict], heldout_ids: set[int]):
        self._records = iter(records)
        self.heldout_ids = heldout_ids
        self.removed: Counter = Counter()
        self.seen = 0

    def __next__(self) -> dict:
        for record in self._records:
            self.seen += 1
            if is_leaked(record, self.heldout_ids):
                self.removed[dataset_name(record)] += 1
                continue
            return record
        raise StopIteration

    def summary(self) -> str:
        return leakage_summary(self.removed, self.seen)


def filter_records(records: Iterable[dict], heldout_ids: set[int]) -> FilteredRecords:
    """The records whose image is not held out, lazily; the returned iterator's ``removed``
    counts what was dropped per dataset once it has been consumed."""
    return FilteredRecords(records, heldout_ids)


def leakage_summary(removed: Counter, total: int) -> str:
    """``leakage filter: removed N of M records (coco: a, llava: b)``."""
    n = sum(removed.values())
    detail = ", ".join(f"{name}: {count}" for name, count in sorted(removed.items()))
    return f"leakage filter: removed {n} of {total} records" + (f" ({detail})" if detail else "")


# -- command line: chatrex data filter-leakage ----------------------------------------------
def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "filter-leakage",
        help="drop training records whose image is in an evaluation set (RefCOCO/+/g val/test, LVIS minival)",
        description="Copy --train to --out without the records whose COCO image id appears in the --exclude evaluation records.",
    )
    p.add_argument("--train", required=True, help="imported training records (JSONL)")
    p.add_argument("--exclude", required=True, nargs="+", metavar="EVAL", help="imported evaluation records (JSONL): RefCOCO/+/g val/test, LVIS minival, ...")
    p.add_argument("--out", required=True, help="where to write the kept records (JSONL; written atomically)")
    p.set_defaults(func=run)
    return p


def _rebase_image(record: dict, src_dir: str, dst_dir: str) -> dict:
    """Keep a relative ``image`` path valid when the output lives in another folder
    (relative paths resolve against the records file's folder, docs/records.md)."""
    image = record.get("image")
    if isinstance(image, str) and not os.path.isabs(image) and src_dir != dst_dir:
        record = dict(record, image=os.path.relpath(os.path.join(src_dir, image), dst_dir))
    return record


def _error(message: str) -> int:
    print(f"chatrex data filter-leakage: error: {message}", file=sys.stderr)
    return 2


def _records_only(rows, path: str):
    """Rows of a records file; a row that is not a record (e.g. a raw COCO JSON passed as
    --train) stops the command instead of being copied as one."""
    for number, row in rows:
        if not isinstance(row, dict) or not ({"image", "conversations"} & set(row)):
            keys = sorted(row)[:6] if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{path}:{number}: not a record (no 'image' or 'conversations'; found {keys}); "
                             f"import the dataset first with chatrex data import")
        yield row


def run(args: argparse.Namespace) -> int:
    """``chatrex data filter-leakage``: exit status 0, or 2 with one line on stderr."""
    if not os.path.isfile(args.train):
        return _error(f"training record file {args.train!r} does not exist")
    if os.path.abspath(args.out) == os.path.abspath(args.train):
        return _error(f"--out {args.out!r} is the --train file; write the filtered records elsewhere")
    src_dir = os.path.dirname(os.path.abspath(args.train))
    dst_dir = os.path.dirname(os.path.abspath(args.out))
    try:
        heldout = heldout_image_ids(args.exclude)
        os.makedirs(dst_dir, exist_ok=True)
        kept = filter_records(_records_only(read_jsonl(args.train, line_numbers=True), args.train), heldout)
        with atomic_write(args.out, encoding="utf-8") as f:
            for record in kept:
                f.write(json.dumps(_rebase_image(record, src_dir, dst_dir), ensure_ascii=False) + "\n")
    except ValueError as err:  # a missing evaluation file, a malformed JSONL line (named)
        return _error(str(err))
    # The category list (coco, lvis) belongs with the records wherever they go.
    categories = sidecar_path(args.train, "categories.json")
    if os.path.isfile(categories):
        shutil.copyfile(categories, sidecar_path(args.out, "categories.json"))
    print(f"{kept.summary()}; {len(heldout)} held-out images; wrote {args.out}")
    return 0
