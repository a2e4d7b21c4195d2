"""Evaluation: the metrics of docs/evaluation.md and a runner over a records folder."""

from .metrics import (
    ClassCounts,
    coco_map,
    detection_precision_recall,
    greedy_match,
    match_detections,
    proposal_recall,
    referring_correct,
)

__all__ = ["ClassCounts", "coco_map", "detection_precision_recall", "greedy_match", "match_detections", "proposal_recall", "referring_correct"]
