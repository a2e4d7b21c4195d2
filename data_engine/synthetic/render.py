"""Painting a laid-out scene into pixels: background, then objects bottom to top.

Each part is filled with its colour (the main part with the object's pattern) and given a
dark outline drawn *inside* its mask, so parts stay distinguishable and the mask, hence the
box, does not grow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .backgrounds import paint_background
from .scene import Scene, SceneObject
from .vocabulary import color_rgb

OUTLINE_RGB = np.array([30, 30, 35], dtype=np.uint8)


def pattern_mask(pattern: str, w: int, h: int) -> np.ndarray | None:
    """Where the darker pattern shade goes, (h, w) bool; None for "plain".

    The period scales with the object (about 1/7 of its short side, at least 4 px) so that
    a pattern looks the same on small and large objects.
    """
    if pattern == "plain":
        return None
    p = max(4, int(round(min(w, h) / 7)))
    yy, xx = np.mgrid[0:h, 0:w]
    if pattern == "striped":  # diagonal, so stripes are not mistaken for window edges
        return (xx + yy) % p < 0.45 * p
    if pattern == "dotted":
        dx = xx % p - (p - 1) / 2
        dy = yy % p - (p - 1) / 2
        return dx * dx + dy * dy <= (0.28 * p) ** 2
    if pattern == "checkered":
        q = max(3, int(round(0.8 * p)))
        return (xx // q + yy // q) % 2 == 1
    raise ValueError(f"unknown pattern {pattern!r}")


def _erode(mask: np.ndarray, t: int) -> np.ndarray:
    """Binary erosion by a (2t+1) cross, with outside-of-box counted as empty."""
    out = mask.copy()
    for _ in range(t):
        m = out.copy()
        m[1:] &= out[:-1]
        m[:-1] &= out[1:]
        m[:, 1:] &= out[:, :-1]
        m[:, :-1] &= out[:, 1:]
        m[0, :] = m[-1, :] = False
        m[:, 0] = m[:, -1] = False
        out = m
    return out


def paint_object(obj: SceneObject, outline: int) -> tuple[np.ndarray, np.ndarray]:
    """The object's local RGB (h, w, 3) and its silhouette mask (h, w)."""
    rgb = np.zeros((obj.h, obj.w, 3), dtype=np.uint8)
    union = np.zeros((obj.h, obj.w), dtype=bool)
    for part in obj.parts:
        m = part.mask
        color = np.array(color_rgb(part.color), dtype=np.uint8)
        rgb[m] = color
        pm = pattern_mask(part.shape.pattern, obj.w, obj.h)
        if pm is not None:
            shade = (color.astype(np.float32) * 0.5).astype(np.uint8)
            rgb[m & pm] = shade
        rgb[m & ~_erode(m, outline)] = OUTLINE_RGB
        union |= m
    return rgb, union


def render_scene(scene: Scene) -> Image.Image:
    """RGB image of the scene, ``scene.width`` x ``scene.height``."""
    canvas = paint_background(scene.background, scene.width, scene.height)
    outline = max(1, int(round(min(scene.width, scene.height) / 320)))
    for obj in scene.objects:
        rgb, union = paint_object(obj, outline)
        window = canvas[obj.y0:obj.y0 + obj.h, obj.x0:obj.x0 + obj.w]
        window[union] = rgb[union]
    return Image.fromarray(canvas, mode="RGB")
