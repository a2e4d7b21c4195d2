"""Image files of imported datasets: locating them, their size, writing embedded ones once."""

from __future__ import annotations

import io
import os
import re

from PIL import Image

from chatrex.utils.atomic import atomic_write

# COCO_train2014_000000000042.jpg, COCO_val2014_..., 000000000042.jpg (2017 names)
_COCO_NAME_RE = re.compile(r"^(?:COCO_[a-z]+\d{4}_)?(\d{12})(?:_\d+)?\.(?:jpg|jpeg|png)$", re.I)


def first_existing(candidates: list[str]) -> tuple[str, bool]:
    """The first candidate that is a file (absolute path), else the first candidate and False."""
    for c in candidates:
        if os.path.isfile(c):
            return os.path.abspath(c), True
    return os.path.abspath(candidates[0]), False


def coco_image_id_from_name(name: str) -> int | None:
    """``COCO_train2014_000000000042.jpg`` or ``000000000042.jpg`` -> 42, other names -> None."""
    m = _COCO_NAME_RE.match(os.path.basename(name))
    return int(m.group(1)) if m else None


def coco_image_candidates(root: str, file_name: str) -> list[str]:
    """Where a COCO image may lie under ``root``: as named, in ``train2014/``, or under its
    2017 name (``%012d.jpg``, same id) in ``train2017/``, ``val2017/`` or ``root`` itself
    (RefCOCO uses train2014 images, which 2017 spread over train and val)."""
    base = os.path.basename(file_name)
    out = [os.path.join(root, file_name), os.path.join(root, "train2014", base)]
    image_id = coco_image_id_from_name(base)
    if image_id is not None:
        name17 = f"{image_id:012d}.jpg"
        out += [os.path.join(root, d, name17) for d in ("", "train2017", "val2017")]
    return out


class ImageLocator:
    """Cached ``first_existing`` (many sentences or rows share one image)."""

    def __init__(self):
        self._cache: dict[tuple, tuple[str, bool]] = {}

    def __call__(self, candidates: list[str]) -> tuple[str, bool]:
        key = tuple(candidates)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = first_existing(candidates)
        return hit


def image_size(path_or_bytes) -> tuple[int, int]:
    """``(width, height)`` from the image header only (no decoding of pixels)."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    try:
        with Image.open(src) as im:
            return im.size
    except (OSError, SyntaxError) as err:  # PIL raises SyntaxError for some truncated headers
        raise ValueError(f"not a readable image: {err}") from None


def write_once(path: str, data: bytes) -> bool:
    """Write ``data`` to ``path`` unless it exists; atomic, so a present file is complete.
    Returns True when written."""
    if os.path.exists(path):
        return False
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return True
