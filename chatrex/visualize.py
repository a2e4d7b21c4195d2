"""Drawing boxes and labels on images (CLI ``--out`` and the demo)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from PIL import Image, ImageDraw, ImageFont

from upn.image_processing import to_rgb_image

# Distinct, colour-blind-friendly-ish palette (Okabe-Ito plus a few).
PALETTE = [
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (120, 120, 120), (170, 68, 153), (17, 119, 51),
]
LABEL_PADDING = 2
# How many label heights a label may move further up or down when the spots next to its box
# are taken: enough for a stack of boxes sharing an edge, cheap for 100 proposals.
MAX_LABEL_STEPS = 8

Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels; x2 and y2 exclusive


def color_for(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def text_color_for(background: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background`` (RGB 0-255)."""
    r, g, b = background[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b >= 128 else (255, 255, 255)


def _fit(x: int, y: int, w: int, h: int, image_w: int, image_h: int) -> Rect:
    """The ``w`` x ``h`` rectangle at (x, y), shifted (and, if larger than the image, cut) to lie
    inside the image."""
    w, h = min(w, image_w), min(h, image_h)
    x = min(max(x, 0), image_w - w)
    y = min(max(y, 0), image_h - h)
    return x, y, x + w, y + h


def _overlap(a: Rect, b: Rect) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _candidates(box, size: tuple[int, int], image_size: tuple[int, int]) -> Iterator[Rect]:
    """Spots for one label, best first: just above the box, inside its top edge, just below it,
    inside its bottom edge (left-aligned, then right-aligned); then further up and down in
    label-height steps, for boxes stacked on one another."""
    w, h = size
    x1, y1, x2, y2 = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])
    rows = [y1 - h, y1, y2, y2 - h]
    for step in range(1, MAX_LABEL_STEPS + 1):
        rows += [y1 - h - step * h, y1 + step * h]
    for y in rows:
        for x in (x1, x2 - w):
            yield _fit(x, y, w, h, *image_size)


def place_labels(image_size: tuple[int, int], boxes, label_sizes: Sequence[tuple[int, int] | None]) -> list[Rect | None]:
    """Where to draw each box's label: a rectangle inside the image, next to its box, that does
    not cover a label placed before it when any candidate spot allows (otherwise the spot that
    covers the least label area).

    Args:
        image_size: (width, height) in pixels.
        boxes: pixel xyxy boxes, one per label, possibly reaching outside the image.
        label_sizes: (width, height) of each label's background, or None for no label.

    Returns:
        One ``(x1, y1, x2, y2)`` rectangle (x2, y2 exclusive) or None per box, in order.
    """
    placed: list[Rect] = []
    out: list[Rect | None] = []
    for box, size in zip(boxes, label_sizes, strict=True):
        if size is None:
            out.append(None)
            continue
        best, best_cost = None, None
        for rect in _candidates(box, size, image_size):
            cost = sum(_overlap(rect, other) for other in placed)
            if best_cost is None or cost < best_cost:
                best, best_cost = rect, cost
            if cost == 0:
                break
        placed.append(best)
        out.append(best)
    return out


def label_font(image_size: tuple[int, int]) -> ImageFont.ImageFont:
    """The label font, larger on larger images so labels stay legible after display scaling."""
    return ImageFont.load_default(size=max(10, round(max(image_size) / 64)))


def draw_boxes(image: Image.Image, boxes, labels=None, colors=None, width: int | None = None) -> Image.Image:
    """Return a copy of ``image`` with pixel xyxy ``boxes`` outlined and optionally labelled.

    Labels sit inside the image, next to their box, and avoid one another where they can
    (:func:`place_labels`). ``colors``: one RGB tuple per box (default: the palette in order).
    """
    out = to_rgb_image(image).copy()  # the picture the model saw (transparency on white)
    draw = ImageDraw.Draw(out)
    font = label_font(out.size)
    width = width or max(2, round(max(out.size) / 250))
    colors = [tuple(colors[i]) if colors is not None else color_for(i) for i in range(len(boxes))]
    texts = [str(labels[i]) if labels is not None and labels[i] not in (None, "") else None for i in range(len(boxes))]
    extents = [draw.textbbox((0, 0), t, font=font) if t else None for t in texts]
    sizes = [(e[2] - e[0] + 2 * LABEL_PADDING, e[3] - e[1] + 2 * LABEL_PADDING) if e else None for e in extents]
    for box, color in zip(boxes, colors):
        draw.rectangle([float(v) for v in box], outline=color, width=width)
    # Labels after all outlines, so no outline crosses a label.
    for text, extent, rect, color in zip(texts, extents, place_labels(out.size, boxes, sizes), colors):
        if rect is None:
            continue
        draw.rectangle([rect[0], rect[1], rect[2] - 1, rect[3] - 1], fill=color)
        draw.text((rect[0] + LABEL_PADDING - extent[0], rect[1] + LABEL_PADDING - extent[1]), text, fill=text_color_for(color), font=font)
    return out
