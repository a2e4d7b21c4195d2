"""Evaluation: the metrics of docs/evaluation.md and a runner over a records folder.

The metrics load on first use (PEP 562): they need torch, and the CLI reads
``chatrex.evaluation.data_sources`` while it builds its parser."""

from __future__ import annotations

import importlib

# Queries per image of the bundled model card's evaluation protocol (benchmarks/eval_bundled.sh
# passes the same numbers as --per-image); None: every region/caption.
PROTOCOL_PER_IMAGE = {"detection": 4, "referring": 3, "region": 5, "grounded_caption": None, "proposals": None}

__all__ = ["ClassCounts", "coco_map", "detection_precision_recall", "greedy_match", "match_detections", "proposal_recall", "referring_correct"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'chatrex.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(".metrics", __name__), name)
