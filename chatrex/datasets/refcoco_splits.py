"""RefCOCO/+/g dataset and split names, and the published per-split counts to check against.

Counts are the UNC (RefCOCO, RefCOCO+) and UMD (RefCOCOg) splits that MLLM tables report:
``(sentences, objects)``. A file whose sentence count equals the object count holds one line
per object (e.g. an un-exploded lmms-lab parquet), and scoring it would be per-object
accuracy, not the published per-sentence number.
"""

from __future__ import annotations

import os
import re

DATASETS = ("refcoco", "refcoco+", "refcocog")
SPLITS = ("val", "testA", "testB", "test", "train")
CANONICAL_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
KNOWN_COUNTS = {
    ("refcoco", "val"): (10834, 3811), ("refcoco", "testA"): (5657, 1975), ("refcoco", "testB"): (5095, 1810),
    ("refcoco+", "val"): (10758, 3805), ("refcoco+", "testA"): (5726, 1975), ("refcoco+", "testB"): (4889, 1798),
    ("refcocog", "val"): (4896, 2573), ("refcocog", "test"): (9602, 5023),
}
_SPLIT_TOKENS = {s.lower(): s for s in SPLITS}


def _dataset_in(text: str) -> str | None:
    text = text.lower()
    if "refcocog" in text:
        return "refcocog"
    if re.search(r"refcoco(\+|plus|_plus|-plus)", text):
        return "refcoco+"
    if "refcoco" in text:
        return "refcoco"
    return None


def guess_dataset_split(path: str) -> tuple[str | None, str | None, str | None]:
    """``(dataset, split, split_by)`` read from a file path, each None when it does not say.

    ``mdetr/finetune_refcoco+_testA.json`` -> ("refcoco+", "testA", None);
    ``RefCOCOg/data/test-00000-of-00002.parquet`` -> ("refcocog", "test", None);
    ``refer/data/refcoco/refs(unc).p`` -> ("refcoco", None, "unc"). The split is read from the
    file name only (a refer folder holds every split).
    """
    parts = os.path.abspath(path).split(os.sep)
    dataset = next((d for d in map(_dataset_in, reversed(parts)) if d), None)
    tokens = re.split(r"[_\-.()\s]+", parts[-1].lower())
    split = next((_SPLIT_TOKENS[t] for t in tokens if t in _SPLIT_TOKENS), None)
    split_by = next((t for p in reversed(parts) for t in re.split(r"[_\-.()\s]+", p.lower()) if t in ("unc", "umd", "google")), None)
    return dataset, split, split_by


def count_warnings(dataset: str | None, split_by: str | None, counts: dict) -> list[str]:
    """Messages for splits whose counts differ from the published full split.

    ``counts`` maps split -> (sentences, distinct objects) seen in the file.
    """
    if dataset is None or (split_by is not None and split_by != CANONICAL_SPLIT_BY.get(dataset)):
        return []
    out = []
    for split, (sentences, objects) in sorted(counts.items(), key=lambda kv: str(kv[0])):
        known = KNOWN_COUNTS.get((dataset, split))
        if known is None or sentences == known[0]:
            continue
        want_s, want_o = known
        if sentences == want_o:
            out.append(f"{dataset} {split}: {sentences} sentences equals the split's object count {want_o}: "
                       f"the file holds one line per object, not per sentence ({want_s} sentences); "
                       "accuracy on it is per-object, not comparable with published numbers")
        else:
            out.append(f"{dataset} {split}: {sentences} sentences / {objects} objects, but the full "
                       f"{CANONICAL_SPLIT_BY[dataset].upper()} split has {want_s} sentences / {want_o} objects "
                       "(a subset or another version of the split)")
    return out
