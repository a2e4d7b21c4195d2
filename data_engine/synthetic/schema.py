"""Record validation for synthetic records: the general schema plus this generator's extras.

``validate_record`` is the general docs/records.md check (re-exported from
``data_engine.schema``); ``validate_synthetic_record`` additionally requires the fields this
generator always writes (regions with attributes, parents for parts, queries, provenance).
"""

from __future__ import annotations

from data_engine.schema import validate_record

from .vocabulary import CATEGORIES, PART_CATEGORIES

_REQUIRED = ("id", "image", "width", "height", "caption", "grounded_caption", "regions",
             "conversations", "queries", "provenance")


def validate_synthetic_record(record: dict) -> None:
    """Raise ``ValueError`` naming the field if ``record`` is not a complete synthetic record."""
    validate_record(record)
    for key in _REQUIRED:
        if key not in record:
            raise ValueError(f"{key}: missing")
    if record["provenance"].get("backend") != "synthetic":
        raise ValueError(f"provenance.backend: expected 'synthetic', got {record['provenance'].get('backend')!r}")
    for i, r in enumerate(record["regions"]):
        for key in ("granularity", "category", "phrase", "description", "referring", "score", "attributes"):
            if key not in r:
                raise ValueError(f"regions[{i}].{key}: missing")
        fine = r["granularity"] == "fine"
        if fine != ("parent" in r):
            raise ValueError(f"regions[{i}].parent: fine regions need a parent, coarse ones none")
        allowed = PART_CATEGORIES if fine else CATEGORIES
        if r["category"] not in allowed:
            raise ValueError(f"regions[{i}].category: {r['category']!r} is not a {r['granularity']} category")


__all__ = ["validate_record", "validate_synthetic_record"]
