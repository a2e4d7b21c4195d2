"""Image loading, mode conversion, resize rule and normalisation for UPN."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .config import ImageConfig


def to_rgb_pil(image) -> Image.Image:
    """Any PIL image or numpy array -> RGB PIL image.

    numpy: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8 as is, uint16 scaled
    by 1/257, floats taken as [0, 1] when max <= 1 else [0, 255]. PIL: every mode
    (L, RGBA, P, I;16, I, F, CMYK...). Raises ValueError for a zero-size image.
    """
    if isinstance(image, Image.Image):
        w, h = image.size
        if w == 0 or h == 0:
            raise ValueError(f"image has zero size {w}x{h} (width x height)")
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # PIL's own convert("RGB") clips these to 255 instead of rescaling.
            return to_rgb_pil(np.asarray(image))
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, image).convert("RGB")
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ValueError(f"numpy image must be (H, W), (H, W, 1|3|4), got shape {image.shape}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"image has zero size {arr.shape[1]}x{arr.shape[0]} (width x height)")
        if arr.dtype == np.uint16:
            arr = arr / 257.0
        elif arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise ValueError("numpy image contains NaN or inf")
            arr = arr * 255.0 if arr.max() <= 1.0 else arr
        elif arr.dtype == np.bool_:
            arr = arr.astype(np.float32) * 255.0
        elif arr.dtype.kind in "iu" and arr.dtype != np.uint8:
            top = float(arr.max()) if arr.size else 0.0
            arr = arr * (255.0 / top) if top > 255 else arr
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 2:
            return Image.fromarray(arr, mode="L").convert("RGB")
        if arr.shape[2] == 4:
            return to_rgb_pil(Image.fromarray(arr, mode="RGBA"))
        return Image.fromarray(arr, mode="RGB")
    raise ValueError(f"image must be a PIL.Image or numpy array, got {type(image).__name__}")


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
    """Image -> ((3, H', W') normalised float tensor, original (width, height)).

    Bilinear PIL resize, then /255 and ImageNet mean/std: the same arithmetic as
    torchvision's ``resize`` / ``to_tensor`` / ``normalize`` on a PIL image.
    """
    pil = to_rgb_pil(image)
    size = pil.size
    new_w, new_h = resized_size(*size, cfg.short_side, cfg.max_size, cfg.size_rounding)
    if (new_w, new_h) != size:
        pil = pil.resize((new_w, new_h), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    return (x - mean) / std, size


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
