"""Record schema (docs/records.md): one JSON object per image, checked by ``validate_record``.

Only ``image`` is required, except in a text-only record (``conversations`` and no
``regions``, e.g. the ShareGPT rows of LLaVA's mix665k), which has no ``image`` (and then no
``width``/``height``). Optional fields, when present, must be well formed:

- ``width``/``height``: positive ints.
- ``regions``: list of dicts with ``box`` = absolute pixel xyxy (x1 <= x2, y1 <= y2; inside
  the image, with 1 px of slack, when width/height are given), ``granularity`` in
  {"coarse", "fine"}, string ``category``/``phrase``/``description``/``referring``,
  ``score`` in [0, 1], ``parent`` = index of a coarse region, ``attributes`` = dict of
  str -> str or None.
- ``caption``/``grounded_caption``: strings; ``<objN>`` indices must be < len(regions) and
  ``<ground>``/``<objects>`` tags balanced.
- ``conversations``: list of ``{"from": "human"|"gpt"|"system", "value": str}``.
- ``queries``: list of ``{"type": "category"|"phrase"|"referring", "text": str,
  "targets": [region indices]}`` (an empty ``targets`` is a negative query).
- ``provenance``: dict; ``source``: dict (where an imported record came from, with its
  original ids); ``id``: non-empty string.
- Regions and queries may carry more keys (imported records keep ``category_id``,
  ``annotation_id``, ``iscrowd``, ``ref_id``, ``sent_id``, ...); ``iscrowd``, when present, is a bool.

Errors are ``ValueError`` whose message starts with the offending field path, e.g.
``regions[3].box: degenerate box [4, 2, 4, 9] has x2 <= x1 ...``. Boxes are pixel xyxy with
x2 > x1 and y2 > y1, at most ``BOX_SLACK`` px outside the image (:func:`chatrex.utils.boxes.check_box`).
"""

from __future__ import annotations

import math

from ..text.markup import GROUND_END, GROUND_START, OBJECTS_END, OBJECTS_START, SPAN, format_object, object_indices
from ..utils.boxes import BoxError, check_box

GRANULARITIES = ("coarse", "fine")
ROLES = ("human", "gpt", "system")
QUERY_TYPES = ("category", "phrase", "referring")
BOX_SLACK = 1.0


def _fail(path: str, msg: str):
    raise ValueError(f"{path}: {msg}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_str(rec: dict, key: str, path: str, nonempty: bool = True) -> None:
    if key in rec:
        v = rec[key]
        if not isinstance(v, str) or (nonempty and not v.strip()):
            _fail(f"{path}{key}", f"must be a non-empty string, got {v!r}")


def _check_grounded_text(text: str, path: str, n_regions: int | None) -> None:
    """Balanced ``<ground>…</ground><objects>…</objects>`` spans and in-range indices."""
    for start, end in ((GROUND_START, GROUND_END), (OBJECTS_START, OBJECTS_END)):
        if text.count(start) != text.count(end):
            _fail(path, f"unbalanced {start} tags in {text!r}")
    if text.count(GROUND_START) != len(SPAN.findall(text)):
        _fail(path, f"every {GROUND_START}…{GROUND_END} must be followed by {OBJECTS_START}…{OBJECTS_END}: {text!r}")
    if n_regions is not None:
        for n in object_indices(text):
            if n >= n_regions:
                _fail(path, f"{format_object(n)} but only {n_regions} regions")


def _check_region(r, i: int, width, height, regions: list) -> None:
    path = f"regions[{i}]"
    if not isinstance(r, dict):
        _fail(path, f"must be a dict, got {type(r).__name__}")
    if "box" not in r:
        _fail(f"{path}.box", "missing")
    box = r["box"]
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_num(v) for v in box):
        _fail(f"{path}.box", f"must be 4 finite numbers (pixel xyxy), got {box!r}")
    try:
        check_box(box, width, height, slack=BOX_SLACK)
    except BoxError as err:
        _fail(f"{path}.box", str(err))
    if "granularity" in r and r["granularity"] not in GRANULARITIES:
        _fail(f"{path}.granularity", f"must be one of {GRANULARITIES}, got {r['granularity']!r}")
    for key in ("category", "phrase", "description", "referring"):
        _check_str(r, key, f"{path}.")
    if "score" in r and not (_is_num(r["score"]) and 0.0 <= r["score"] <= 1.0):
        _fail(f"{path}.score", f"must be a number in [0, 1], got {r['score']!r}")
    if "parent" in r:
        p = r["parent"]
        if not _is_int(p) or not 0 <= p < len(regions) or p == i:
            _fail(f"{path}.parent", f"must index another region, got {p!r}")
        if isinstance(regions[p], dict) and regions[p].get("granularity", "coarse") != "coarse":
            _fail(f"{path}.parent", f"region {p} is not coarse")
    if "iscrowd" in r and not isinstance(r["iscrowd"], bool):
        _fail(f"{path}.iscrowd", f"must be a bool, got {r['iscrowd']!r}")
    if "attributes" in r:
        a = r["attributes"]
        if not isinstance(a, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                              for k, v in a.items()):
            _fail(f"{path}.attributes", f"must map strings to strings or null, got {a!r}")


def validate_record(record) -> None:
    """Raise ``ValueError`` naming the offending field if ``record`` breaks the schema."""
    if not isinstance(record, dict):
        _fail("record", f"must be a dict, got {type(record).__name__}")
    text_only = "conversations" in record and "regions" not in record
    if "image" not in record and not text_only:
        _fail("image", "missing (required unless the record is text-only: conversations and no regions)")
    _check_str(record, "image", "")
    width, height = record.get("width"), record.get("height")
    if "image" not in record and (width is not None or height is not None):
        _fail("width" if width is not None else "height", "given for a text-only record (no image)")
    for key, v in (("width", width), ("height", height)):
        if v is not None and (not _is_int(v) or v <= 0):
            _fail(key, f"must be a positive int, got {v!r}")
    _check_str(record, "id", "")
    regions = record.get("regions")
    n_regions = None
    if regions is not None:
        if not isinstance(regions, list):
            _fail("regions", f"must be a list, got {type(regions).__name__}")
        n_regions = len(regions)
        for i, r in enumerate(regions):
            _check_region(r, i, width, height, regions)
    for key in ("caption", "grounded_caption"):
        _check_str(record, key, "")
        if key in record:
            _check_grounded_text(record[key], key, n_regions)
    if "conversations" in record:
        conv = record["conversations"]
        if not isinstance(conv, list):
            _fail("conversations", f"must be a list, got {type(conv).__name__}")
        for i, turn in enumerate(conv):
            path = f"conversations[{i}]"
            if not isinstance(turn, dict):
                _fail(path, "must be a dict")
            if turn.get("from") not in ROLES:
                _fail(f"{path}.from", f"must be one of {ROLES}, got {turn.get('from')!r}")
            if not isinstance(turn.get("value"), str):
                _fail(f"{path}.value", f"must be a string, got {turn.get('value')!r}")
            _check_grounded_text(turn["value"], f"{path}.value", n_regions)
    if "queries" in record:
        qs = record["queries"]
        if not isinstance(qs, list):
            _fail("queries", f"must be a list, got {type(qs).__name__}")
        for i, q in enumerate(qs):
            path = f"queries[{i}]"
            if not isinstance(q, dict):
                _fail(path, "must be a dict")
            if q.get("type") not in QUERY_TYPES:
                _fail(f"{path}.type", f"must be one of {QUERY_TYPES}, got {q.get('type')!r}")
            _check_str(q, "text", f"{path}.")
            if "text" not in q:
                _fail(f"{path}.text", "missing")
            t = q.get("targets")
            if not isinstance(t, list) or not all(_is_int(v) for v in t):
                _fail(f"{path}.targets", f"must be a list of region indices, got {t!r}")
            if n_regions is not None and any(not 0 <= v < n_regions for v in t):
                _fail(f"{path}.targets", f"{t!r} out of range for {n_regions} regions")
    for key in ("provenance", "source"):
        if key in record and not isinstance(record[key], dict):
            _fail(key, f"must be a dict, got {type(record[key]).__name__}")
