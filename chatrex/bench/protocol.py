"""Every knob of a benchmark run, validated, printed with the result and stored in
``metrics.json``. The defaults are the ChatRex paper's protocol (§5.1, official issue #19):

* the UPN fine-grained prompt, proposals kept where score >= 0.3, top 100 by score, sorted by
  score so that ``<obj0>`` is the best, scores rounded to 2 decimals as the official
  ``UPNWrapper.filter`` does (ties then keep the proposal order: a stable tie-break);
* NMS at IoU 0.8, as the official README's ``filter(..., min_score=0.3, nms_value=0.8)``;
* detection asks about the categories present in the image's ground truth, all of them in one
  prompt joined with ``"; "`` (the official README), or one prompt per category;
* REC asks one question per sentence and scores the first returned box.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

PROMPT_MODES = ("joint", "per-category")
CATEGORY_MODES = ("gt-present", "all")
PROPOSAL_PROMPTS = ("fine", "coarse", "both")


@dataclass(frozen=True)
class ProposalProtocol:
    """How the box list the model sees is built from UPN's output."""

    prompt: str = "fine"
    min_score: float = 0.3
    max_proposals: int = 100
    nms_iou: float | None = 0.8
    """``None``: no NMS."""
    score_decimals: int | None = 2
    """Round scores as the official wrapper does (``None`` keeps them as they are)."""

    def __post_init__(self):
        if self.prompt not in PROPOSAL_PROMPTS:
            raise ValueError(f"proposal prompt must be one of {PROPOSAL_PROMPTS}, got {self.prompt!r}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score!r}")
        if isinstance(self.max_proposals, bool) or not isinstance(self.max_proposals, int) or not 1 <= self.max_proposals <= 100:
            raise ValueError(f"max_proposals must be an int in [1, 100] (the model has 100 object tokens), got {self.max_proposals!r}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1] or None, got {self.nms_iou!r}")
        if self.score_decimals is not None and not 0 <= self.score_decimals <= 6:
            raise ValueError(f"score_decimals must be in [0, 6] or None, got {self.score_decimals!r}")


@dataclass(frozen=True)
class DetectionProtocol:
    """COCO / LVIS detection."""

    dataset: str
    """``coco`` or ``lvis``."""
    annotations: str
    """The annotation file the ground truth and the mAP come from."""
    categories: str = "gt-present"
    prompt_mode: str = "joint"
    separator: str = "; "
    iou_threshold: float = 0.5
    proposals: ProposalProtocol = dataclasses.field(default_factory=ProposalProtocol)

    def __post_init__(self):
        if self.dataset not in ("coco", "lvis"):
            raise ValueError(f"dataset must be coco or lvis, got {self.dataset!r}")
        if self.categories not in CATEGORY_MODES:
            raise ValueError(f"categories must be one of {CATEGORY_MODES}, got {self.categories!r}")
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {PROMPT_MODES}, got {self.prompt_mode!r}")


@dataclass(frozen=True)
class RecProtocol:
    """RefCOCO / RefCOCO+ / RefCOCOg referring expression comprehension."""

    dataset: str | None
    """refcoco, refcoco+ or refcocog; ``None`` when neither the flags nor the file name say."""
    split: str | None
    source_format: str
    source: str
    iou_threshold: float = 0.5
    scored_box: str = "first"
    """Acc@0.5 is scored on the first returned box (the usual one-box-per-sentence rule)."""
    proposals: ProposalProtocol = dataclasses.field(default_factory=ProposalProtocol)


def as_dict(protocol) -> dict:
    """The protocol as plain JSON values (nested proposal settings included)."""
    return dataclasses.asdict(protocol)


def describe(protocol) -> str:
    """One line per knob, for the printed result."""
    flat = {}
    for key, value in as_dict(protocol).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    width = max(len(k) for k in flat)
    return "\n".join(f"{k:<{width}}  {v!r}" if isinstance(v, str) else f"{k:<{width}}  {v}" for k, v in flat.items())
