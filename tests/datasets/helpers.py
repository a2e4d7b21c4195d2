"""Assertions shared by the importer tests."""

from __future__ import annotations

import json


def xyxy(b):
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``."""
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def assert_box(got, want):
    assert len(got) == 4 and all(abs(g - w) <= 1e-6 for g, w in zip(got, want)), (got, want)


def read_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]
