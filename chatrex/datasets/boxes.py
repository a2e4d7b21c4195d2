"""Source boxes to the records' absolute pixel xyxy, with the schema's 1 px of slack.

COCO, LVIS, Objects365, MDETR, refer and the lmms-lab parquet store ``[x, y, w, h]``; Visual
Genome ``x, y, width, height``; the Qwen/InternVL JSONL and Rexverse store ``[x1, y1, x2, y2]``.
All become ``[x1, y1, x2, y2]`` floats in pixels of the original image (continuous
coordinates, no +1).
"""

from __future__ import annotations

import math

from ..utils.boxes import BoxError, check_box
from .schema import BOX_SLACK
from .sink import BadRow


class BadBox(BadRow):
    """A box that cannot be imported; ``kind`` is the short reason used in the summary."""


def _numbers(box, what: str) -> list[float]:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise BadBox("malformed box", f"{what} must be 4 numbers, got {box!r}")
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        raise BadBox("malformed box", f"{what} must be 4 numbers, got {box!r}") from None
    if isinstance(box[0], bool) or not all(math.isfinite(v) for v in vals):
        raise BadBox("malformed box", f"{what} must be 4 finite numbers, got {box!r}")
    return vals


def xywh_to_xyxy(box) -> list[float]:
    """``[x, y, w, h]`` (pixels, top-left origin) -> ``[x1, y1, x2, y2]``."""
    x, y, w, h = _numbers(box, "xywh box")
    return [x, y, x + w, y + h]


def as_xyxy(box) -> list[float]:
    """A ``[x1, y1, x2, y2]`` box as 4 floats."""
    return _numbers(box, "xyxy box")


def checked_box(xyxy: list[float], width: int | None, height: int | None) -> tuple[list[float], bool]:
    """Refuse a degenerate box or one outside the image; clip at most 1 px of slack.

    Returns ``(box, clipped)``. Raises :class:`BadBox` when ``x2 <= x1`` or ``y2 <= y1`` (no
    area: nothing to ground) or when the box leaves the ``width`` x ``height`` image by more
    than ``BOX_SLACK`` pixels. Rounding slack within 1 px is clipped (``clipped`` is True), so
    imported boxes always lie inside the image.
    """
    try:
        box = check_box(xyxy, width, height, slack=BOX_SLACK).tolist()
    except BoxError as err:
        raise BadBox(err.kind, str(err)) from None
    return box, box != [float(v) for v in xyxy]
