"""Object geometry: how each category is built from parts, as masks in object-local pixels.

An object's full box is ``w x h`` pixels; every part is drawn into that box (local xyxy pixel
coordinates, origin at the box's top-left). Parts are listed bottom-to-top: a later part
covers an earlier one (a window sits on the wall), which is also the order they are painted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .vocabulary import PART_COLORS, PARTS, SHAPES


@dataclass(frozen=True)
class PartShape:
    """One part of an object, in object-local pixel coordinates.

    kind: "polygon" (``points`` = flat x, y list) or "ellipse" (``points`` = local xyxy).
    is_region: False for the single body of a simple shape, which is the object itself and
    gets no fine region of its own.
    """

    name: str
    kind: str
    points: tuple[float, ...]
    color: str
    pattern: str = "plain"
    is_region: bool = True


def _rect(x1: float, y1: float, x2: float, y2: float) -> tuple[float, ...]:
    return (x1, y1, x2, y1, x2, y2, x1, y2)


def _thick(frac: float, dim: float, min_px: float) -> float:
    """A part thickness: ``frac`` of the object dimension but never below ``min_px`` pixels,
    so that thin parts (masts, poles) stay detectable on small objects."""
    return max(frac * dim, min_px)


def _secondary(rng: np.random.Generator, choices: tuple[str, ...]) -> str:
    assert all(c in PART_COLORS for c in choices), choices
    return choices[int(rng.integers(len(choices)))]


def _house(w, h, color, pattern, rng, min_px):
    door_w = _thick(0.2, w, min_px)
    door_cx = w * (0.5 + rng.uniform(-0.04, 0.04))
    win = max(0.19 * w, min_px)
    win_h = max(0.17 * h, min_px)
    wy1 = 0.52 * h
    parts = [
        PartShape("wall", "polygon", _rect(0.08 * w, 0.38 * h, 0.92 * w, h), color, pattern),
        PartShape("roof", "polygon", (0.0, 0.44 * h, 0.5 * w, 0.0, w, 0.44 * h),
                  _secondary(rng, ("brown", "gray", "black", "maroon"))),
        PartShape("door", "polygon", _rect(door_cx - door_w / 2, 0.62 * h, door_cx + door_w / 2, h),
                  _secondary(rng, ("brown", "black", "white"))),
    ]
    sides = [("left", 0.13 * w), ("right", 0.87 * w - win)]
    n_windows = 1 + int(rng.integers(2))
    if n_windows == 1:
        sides = [sides[int(rng.integers(2))]]
    for _, x1 in sides:
        parts.append(PartShape("window", "polygon", _rect(x1, wy1, x1 + win, wy1 + win_h), "sky blue"))
    return parts


def _car(w, h, color, pattern, rng, min_px):
    body = (0.0, 0.38 * h, 0.2 * w, 0.33 * h, 0.3 * w, 0.02 * h, 0.72 * w, 0.02 * h,
            0.84 * w, 0.33 * h, w, 0.4 * h, w, 0.8 * h, 0.0, 0.8 * h)
    r = max(0.22 * h, min_px / 2)
    parts = [PartShape("body", "polygon", body, color, pattern)]
    if rng.integers(2):
        parts.append(PartShape("window", "polygon",
                               (0.34 * w, 0.32 * h, 0.38 * w, 0.08 * h, 0.5 * w, 0.08 * h, 0.5 * w, 0.32 * h),
                               "sky blue"))
        parts.append(PartShape("window", "polygon",
                               (0.54 * w, 0.32 * h, 0.54 * w, 0.08 * h, 0.68 * w, 0.08 * h, 0.76 * w, 0.32 * h),
                               "sky blue"))
    else:
        parts.append(PartShape("window", "polygon",
                               (0.34 * w, 0.32 * h, 0.38 * w, 0.08 * h, 0.68 * w, 0.08 * h, 0.76 * w, 0.32 * h),
                               "sky blue"))
    for cx in (0.22 * w, 0.78 * w):
        parts.append(PartShape("wheel", "ellipse", (cx - r, h - 2 * r, cx + r, h), "black"))
    return parts


def _tree(w, h, color, pattern, rng, min_px):
    tw = _thick(0.18, w, min_px)
    parts = [PartShape("trunk", "polygon", _rect(0.5 * w - tw / 2, 0.5 * h, 0.5 * w + tw / 2, h), "brown")]
    if rng.integers(2):  # round crown
        parts.append(PartShape("crown", "ellipse", (0.0, 0.0, w, 0.7 * h), color, pattern))
    else:  # pine crown
        parts.append(PartShape("crown", "polygon", (0.5 * w, 0.0, w, 0.74 * h, 0.0, 0.74 * h), color, pattern))
    return parts


def _person(w, h, color, pattern, rng, min_px):
    aw = _thick(0.2, w, min_px)
    lw = _thick(0.21, w, min_px)
    skin = "beige"
    legs = _secondary(rng, ("black", "gray", "brown"))
    return [
        PartShape("torso", "polygon", _rect(0.26 * w, 0.21 * h, 0.74 * w, 0.6 * h), color, pattern),
        PartShape("head", "ellipse", (0.31 * w, 0.0, 0.69 * w, 0.2 * h), skin),
        PartShape("arm", "polygon", _rect(0.25 * w - aw, 0.22 * h, 0.25 * w, 0.56 * h), skin),
        PartShape("arm", "polygon", _rect(0.75 * w, 0.22 * h, 0.75 * w + aw, 0.56 * h), skin),
        PartShape("leg", "polygon", _rect(0.48 * w - lw, 0.61 * h, 0.48 * w, h), legs),
        PartShape("leg", "polygon", _rect(0.52 * w, 0.61 * h, 0.52 * w + lw, h), legs),
    ]


def _boat(w, h, color, pattern, rng, min_px):
    mw = _thick(0.08, w, min_px)
    mx = w * 0.45
    sail_right = bool(rng.integers(2))
    if sail_right:
        sail = (mx + mw / 2 + 0.03 * w, 0.06 * h, mx + mw / 2 + 0.03 * w, 0.62 * h, 0.95 * w, 0.62 * h)
    else:
        sail = (mx - mw / 2 - 0.03 * w, 0.06 * h, mx - mw / 2 - 0.03 * w, 0.62 * h, 0.05 * w, 0.62 * h)
    return [
        PartShape("hull", "polygon", (0.0, 0.66 * h, w, 0.66 * h, 0.82 * w, h, 0.18 * w, h), color, pattern),
        PartShape("mast", "polygon", _rect(mx - mw / 2, 0.0, mx + mw / 2, 0.66 * h), "brown"),
        PartShape("sail", "polygon", sail, _secondary(rng, ("white", "gray"))),
    ]


def _lamp(w, h, color, pattern, rng, min_px):
    pw = _thick(0.16, w, min_px)
    pole = (0.5 * w - pw / 2, 0.3 * h, 0.5 * w + pw / 2, 0.3 * h, 0.5 * w + pw / 2, 0.9 * h,
            0.88 * w, 0.9 * h, 0.88 * w, h, 0.12 * w, h, 0.12 * w, 0.9 * h, 0.5 * w - pw / 2, 0.9 * h)
    return [
        PartShape("light", "polygon", (0.2 * w, 0.0, 0.8 * w, 0.0, w, 0.34 * h, 0.0, 0.34 * h), color, pattern),
        PartShape("pole", "polygon", pole, _secondary(rng, ("gray", "black"))),
    ]


def _shape(category, w, h, color, pattern):
    if category == "circle":
        return [PartShape(category, "ellipse", (0.0, 0.0, w, h), color, pattern, is_region=False)]
    if category == "square":
        pts = _rect(0.04 * w, 0.04 * h, 0.96 * w, 0.96 * h)
    elif category == "triangle":
        pts = (0.5 * w, 0.0, w, h, 0.0, h)
    elif category == "star":
        pts = []
        for k in range(10):
            r = 0.5 if k % 2 == 0 else 0.21
            a = -math.pi / 2 + k * math.pi / 5
            pts += [w * (0.5 + r * math.cos(a)), h * (0.53 + r * math.sin(a))]
        pts = tuple(pts)
    elif category == "hexagon":
        pts = tuple(v for k in range(6) for v in (w * (0.5 + 0.5 * math.cos(k * math.pi / 3)),
                                                  h * (0.5 + 0.47 * math.sin(k * math.pi / 3))))
    else:
        raise ValueError(f"unknown shape {category!r}")
    return [PartShape(category, "polygon", tuple(pts), color, pattern, is_region=False)]


_BUILDERS = {"house": _house, "car": _car, "tree": _tree, "person": _person, "boat": _boat, "lamp": _lamp}
# Painting order per category (bottom to top); the main part is not always at the bottom.
_PAINT_ORDER = {"tree": ("trunk", "crown"), "boat": ("hull", "mast", "sail"), "lamp": ("pole", "light")}


def build_parts(category: str, w: int, h: int, color: str, pattern: str,
                rng: np.random.Generator, min_px: float) -> list[PartShape]:
    """The parts of one object in painting order (bottom to top), local pixel coordinates.

    ``min_px`` is the minimum thickness of thin parts in pixels (about 6 at 512 px images).
    """
    if category in SHAPES:
        return _shape(category, w, h, color, pattern)
    if category not in _BUILDERS:
        raise ValueError(f"unknown category {category!r}")
    parts = _BUILDERS[category](w, h, color, pattern, rng, min_px)
    assert {p.name for p in parts} == set(PARTS[category]), (category, [p.name for p in parts])
    order = _PAINT_ORDER.get(category)
    if order:
        parts.sort(key=lambda p: order.index(p.name))
    return parts


def rasterize(part: PartShape, w: int, h: int) -> np.ndarray:
    """Boolean mask (h, w) of one part inside its object's local box."""
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    if part.kind == "ellipse":
        x1, y1, x2, y2 = part.points
        # PIL's ellipse includes the far edge; subtract one so a box of width w stays inside.
        draw.ellipse((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), fill=255)
    elif part.kind == "polygon":
        # Clamp to the last pixel row/column for the same reason.
        pts = [min(max(v, 0.0), (w if i % 2 == 0 else h) - 1) for i, v in enumerate(part.points)]
        draw.polygon(pts, fill=255)
    else:
        raise ValueError(f"unknown part kind {part.kind!r}")
    return np.asarray(img) > 0
