"""Backgrounds: real photo crops (bundled assets) or procedural sky/ground gradients.

The photos in ``data_engine/assets/backgrounds/`` are downscaled copies of scikit-image's
sample images (see ``build_assets.py``); they are bundled so that generation needs neither
scikit-image nor a network. Photos are blended towards a pale colour so that the saturated,
outlined objects stay clearly visible on top of them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from .scene import Background

PHOTO_DIR = Path(__file__).resolve().parent.parent / "assets" / "backgrounds"
PHOTO_FRACTION = 0.45


@functools.lru_cache(maxsize=1)
def photo_names() -> tuple[str, ...]:
    """Bundled photo file names, sorted so that sampling is stable across file systems."""
    if not PHOTO_DIR.is_dir():
        return ()
    return tuple(sorted(p.name for p in PHOTO_DIR.glob("*.png")))


@functools.lru_cache(maxsize=32)
def _load_photo(name: str) -> Image.Image:
    with Image.open(PHOTO_DIR / name) as im:
        return im.copy()


def sample_background(rng: np.random.Generator) -> Background:
    """Choose the background of one image; all randomness is drawn here, none at paint time."""
    names = photo_names()
    if names and rng.random() < PHOTO_FRACTION:
        return Background("photo", names[int(rng.integers(len(names)))], {
            "crop": float(rng.uniform(0.35, 0.8)),  # crop side as a fraction of the short side
            "cx": float(rng.random()), "cy": float(rng.random()),
            "flip": bool(rng.integers(2)),
            "tint": [int(v) for v in rng.integers(120, 256, size=3)],  # for grayscale photos
            "pale": [int(v) for v in rng.integers(200, 256, size=3)],
            "alpha": float(rng.uniform(0.25, 0.45)),  # how much the pale colour washes it out
        })
    return Background("procedural", None, {
        "top": [int(v) for v in rng.integers(150, 240, size=3)],
        "bottom": [int(v) for v in rng.integers(150, 240, size=3)],
        "horizon": float(rng.uniform(0.45, 0.8)) if rng.random() < 0.6 else None,
        "ground": [int(v) for v in rng.integers(110, 210, size=3)],
        "noise_seed": int(rng.integers(2**31)),
    })


def paint_background(bg: Background, width: int, height: int) -> np.ndarray:
    """The background as a (height, width, 3) uint8 array."""
    if bg.kind == "photo":
        return _paint_photo(bg, width, height)
    if bg.kind == "procedural":
        return _paint_procedural(bg, width, height)
    raise ValueError(f"unknown background kind {bg.kind!r}")


def _paint_photo(bg: Background, width: int, height: int) -> np.ndarray:
    p = bg.params
    photo = _load_photo(bg.photo)
    pw, ph = photo.size
    side = max(8, int(p["crop"] * min(pw, ph)))
    cw, ch = (side, max(8, int(side * height / width))) if width >= height else (max(8, int(side * width / height)), side)
    cw, ch = min(cw, pw), min(ch, ph)
    x = int(p["cx"] * (pw - cw))
    y = int(p["cy"] * (ph - ch))
    crop = photo.crop((x, y, x + cw, y + ch)).resize((width, height), Image.BILINEAR)
    if p["flip"]:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(crop, dtype=np.float32)
    if arr.ndim == 2:  # grayscale texture (grass, gravel, brick): colourise it
        arr = arr[..., None] * (np.asarray(p["tint"], dtype=np.float32) / 255.0)
    arr = (1 - p["alpha"]) * arr + p["alpha"] * np.asarray(p["pale"], dtype=np.float32)
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def _paint_procedural(bg: Background, width: int, height: int) -> np.ndarray:
    p = bg.params
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top = np.asarray(p["top"], dtype=np.float32)
    bottom = np.asarray(p["bottom"], dtype=np.float32)
    arr = np.broadcast_to((1 - t) * top + t * bottom, (height, width, 3)).copy()
    if p["horizon"] is not None:
        y = int(p["horizon"] * height)
        arr[y:] = np.asarray(p["ground"], dtype=np.float32)
    # Smooth low-contrast blotches so that backgrounds are not trivially flat.
    noise_rng = np.random.default_rng(p["noise_seed"])
    coarse = noise_rng.normal(0.0, 10.0, size=(6, 6)).astype(np.float32)
    blotch = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC))
    arr += blotch[..., None]
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)
