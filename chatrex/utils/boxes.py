"""The one check of pixel xyxy boxes against their image, shared by inference, training,
the dataset importers and the data engine. (``upn`` keeps its own tensor checks: it cannot
import ``chatrex``.)"""

from __future__ import annotations

import numpy as np


class BoxError(ValueError):
    """A box that fails :func:`check_box`; ``kind`` is the short reason ("malformed box",
    "degenerate box" or "box outside image") that importers count rows under."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


def check_box(box, width: int | None, height: int | None, *, slack: float | None = None, name: str = "box") -> np.ndarray:
    """Validate one pixel xyxy ``box`` against a ``width`` x ``height`` image; return it clipped.

    ``slack``: how many pixels the box may leave the image by before it is refused (None: any
    amount, as long as part of it lies inside; 0: none). What it may stick out is clipped. A
    ``None`` width or height skips that axis. Raises :class:`BoxError` naming ``name``, the box
    and the problem: non-finite values, ``x2 <= x1`` or ``y2 <= y1``, or outside the image.
    """
    vals = np.asarray(box, dtype=np.float64).reshape(-1)
    if vals.size != 4:
        raise BoxError("malformed box", f"{name} must be 4 numbers x1, y1, x2, y2 (pixel xyxy), got {box!r}")
    if not np.isfinite(vals).all():
        raise BoxError("malformed box", f"{name} {_fmt(vals)} has non-finite coordinates")
    x1, y1, x2, y2 = vals
    if not (x2 > x1 and y2 > y1):
        raise BoxError("degenerate box", f"degenerate {name} {_fmt(vals)} has x2 <= x1 or y2 <= y1 "
                                         "(pixel xyxy needs x2 > x1 and y2 > y1)")
    out = vals.copy()
    for axis, size, (lo, hi) in (("width", width, (0, 2)), ("height", height, (1, 3))):
        if size is None:
            continue
        if slack is not None and (vals[lo] < -slack or vals[hi] > size + slack):
            raise BoxError("box outside image", f"{name} {_fmt(vals)} (xyxy) outside image {axis} {size} "
                                                f"(more than {slack:g} px outside the {_size(width, height)} image)")
        out[[lo, hi]] = out[[lo, hi]].clip(0, size)
    if not (out[2] > out[0] and out[3] > out[1]):
        raise BoxError("box outside image", f"{name} {_fmt(vals)} lies outside the {_size(width, height)} image")
    return out


def check_boxes(boxes, width: int, height: int, max_objects: int | None = None) -> np.ndarray:
    """:func:`check_box` on each of ``boxes`` (K, 4), named ``box i``, with any overhang
    clipped; also refuses more than ``max_objects`` boxes. Returns float64 (K, 4)."""
    arr = np.asarray(boxes if boxes is not None else np.zeros((0, 4)), dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4) in pixel xyxy, got {tuple(arr.shape)}")
    if max_objects is not None and len(arr) > max_objects:
        raise ValueError(
            f"{len(arr)} boxes given but at most {max_objects} are supported; "
            f"keep the top-{max_objects} by score (e.g. torchvision.ops.nms then topk)"
        )
    return np.stack([check_box(b, width, height, name=f"box {i}") for i, b in enumerate(arr)])


def _size(width, height) -> str:
    return f"{'?' if width is None else width}x{'?' if height is None else height}"


def _fmt(box) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"
