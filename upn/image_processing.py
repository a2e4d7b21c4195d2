"""Image loading, mode conversion, resize rule and normalisation for UPN.

:func:`to_rgb_image` and :func:`resize_normalize` are also ChatRex's (and its training
scripts'): ``upn`` cannot import ``chatrex``, so the one conversion lives here and every
model input, at inference and in training, goes through it.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .config import ImageConfig

# PIL's own convert("RGB") clips these to 255 instead of rescaling them.
_WIDE_MODES = ("I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = (255, 255, 255, 255)


def to_rgb_image(image) -> Image.Image:
    """Any PIL image or numpy array -> RGB PIL image, the same way for every model input.

    PIL: every mode. Anything with transparency (RGBA, LA, PA, palette or a transparency
    key) is composited on white; 16/32-bit integer and float modes are rescaled, not clipped.
    numpy: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4). Values become 8 bits as follows:

    * uint8 as is, bool as 0/255, uint16 divided by 257;
    * other integers: as is within [0, 255], divided by 257 within [0, 65535], otherwise
      stretched from [min(lo, 0), hi] to [0, 255];
    * floats: [0, 1] when the maximum is <= 1, else [0, 255]. NaN, inf and values outside
      [0, 255] raise ValueError: such an array is not an image, and clipping it would hide that.

    Raises:
        ValueError: zero-size image, unsupported type, shape or dtype, or bad float values.
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL.Image or numpy array, got {type(image).__name__}")
    _check_size(*image.size)
    if image.mode in _WIDE_MODES or image.mode.startswith("I;16"):
        return _array_to_rgb(np.asarray(image))
    if image.mode in _ALPHA_MODES or image.mode == "P" or "transparency" in image.info:
        return _on_white(image)
    return image.convert("RGB")


def _check_size(width: int, height: int) -> None:
    if width == 0 or height == 0:
        raise ValueError(f"image has zero size {width}x{height} (width x height)")


def _on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")


def _array_to_rgb(arr: np.ndarray) -> Image.Image:
    shape = arr.shape
    if arr.ndim == 3 and shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and shape[2] not in (3, 4)):
        raise ValueError(f"numpy image must be (H, W) or (H, W, 1|3|4), got shape {shape}")
    _check_size(shape[1], shape[0])
    image = Image.fromarray(np.ascontiguousarray(_to_uint8(arr)))
    return _on_white(image) if image.mode == "RGBA" else image.convert("RGB")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind == "f":
        return _floats_to_uint8(arr)
    if arr.dtype.kind in "iu":
        return _ints_to_uint8(arr)
    raise ValueError(f"unsupported image dtype {arr.dtype}")


def _floats_to_uint8(arr: np.ndarray) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ValueError("float image contains NaN or inf values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"float image values must lie in [0, 1] or [0, 255], got [{lo:g}, {hi:g}]")
    a = arr.astype(np.float64)
    return np.rint(a * 255.0 if hi <= 1.0 else a).astype(np.uint8)


def _ints_to_uint8(arr: np.ndarray) -> np.ndarray:
    a = arr.astype(np.float64)
    lo, hi = min(float(a.min()), 0.0), float(a.max())
    if (arr.dtype.kind == "u" and arr.dtype.itemsize == 2) or (lo >= 0 and 255 < hi <= 65535):
        a = a / 257.0
    elif lo < 0 or hi > 255:
        # Outside 16 bits there is no conventional white: stretch so the range stays visible.
        a = (a - lo) / (hi - lo) * 255.0
    return np.rint(a).astype(np.uint8)


def resize_normalize(image: Image.Image, size: tuple[int, int], mean, std,
                     resample=Image.BILINEAR) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float tensor: resized to ``size`` (width, height), /255,
    then ``(x - mean) / std`` per channel: torchvision's resize / to_tensor / normalize."""
    if image.size != tuple(size):
        image = image.resize(tuple(size), resample)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def resized_size(width: int, height: int, short_side: int, max_size: int,
                 rounding: str = "round") -> tuple[int, int]:
    """(new_w, new_h): short side to ``short_side`` unless the long side would pass ``max_size``.

    rounding "round": one scale, both sides rounded. "truncate": the official UPN /
    DETR ``get_size_with_aspect_ratio`` rule: a capped short side is
    ``round(max_size * short / long)``, the long side is then truncated
    (``int(short * long / short_orig)``), and an image whose short side already has
    the target size is kept as is.
    """
    if rounding == "truncate":
        size = short_side
        lo, hi = float(min(width, height)), float(max(width, height))
        if hi / lo * size > max_size:
            size = int(round(max_size * lo / hi))
        if (width <= height and width == size) or (height <= width and height == size):
            return width, height
        if width < height:
            return size, max(1, int(size * height / width))
        return max(1, int(size * width / height)), size
    if rounding != "round":
        raise ValueError(f"rounding must be 'round' or 'truncate', got {rounding!r}")
    short, long = min(width, height), max(width, height)
    scale = short_side / short
    if long * scale > max_size:
        scale = max_size / long
    return max(1, round(width * scale)), max(1, round(height * scale))


def preprocess(image, cfg: ImageConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    """Image -> ((3, H', W') normalised float tensor, original (width, height)); bilinear resize."""
    rgb = to_rgb_image(image)
    new_size = resized_size(*rgb.size, cfg.short_side, cfg.max_size, cfg.size_rounding)
    return resize_normalize(rgb, new_size, cfg.mean, cfg.std), rgb.size


def pad_batch(tensors: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (3, H_i, W_i) images bottom/right to one (B, 3, H, W) batch.

    Returns (pixel_values, pixel_mask) with pixel_mask (B, H, W) 1 = real pixel, 0 = padding
    (the official ``nested_tensor_from_tensor_list`` layout).
    """
    h = max(t.shape[1] for t in tensors)
    w = max(t.shape[2] for t in tensors)
    batch = tensors[0].new_zeros(len(tensors), 3, h, w)
    mask = torch.zeros(len(tensors), h, w, dtype=torch.bool)
    for i, t in enumerate(tensors):
        batch[i, :, :t.shape[1], :t.shape[2]] = t
        mask[i, :t.shape[1], :t.shape[2]] = True
    return batch, mask
