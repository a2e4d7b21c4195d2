"""Drawing boxes and labels on images (CLI ``--out`` and the demo)."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

# Distinct, colour-blind-friendly-ish palette (Okabe-Ito plus a few).
PALETTE = [
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (120, 120, 120), (170, 68, 153), (17, 119, 51),
]


def color_for(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def draw_boxes(image: Image.Image, boxes, labels=None, colors=None, width: int | None = None) -> Image.Image:
    """Return a copy of ``image`` with pixel xyxy ``boxes`` outlined and optionally labelled."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    width = width or max(2, round(max(out.size) / 250))
    for i, box in enumerate(boxes):
        color = tuple(colors[i]) if colors is not None else color_for(i)
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        if labels is not None and labels[i]:
            text = str(labels[i])
            left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
            ty = y1 - (bottom - top) - 4 if y1 - (bottom - top) - 4 >= 0 else y1
            draw.rectangle([x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 4], fill=color)
            draw.text((x1 + 2, ty + 1), text, fill=(0, 0, 0), font=font)
    return out
