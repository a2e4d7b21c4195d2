"""Image and box preprocessing: pad to a square, resize per encoder, normalise.

Box conventions used throughout ChatRex:

* user-facing boxes are **pixel xyxy in the original image**;
* boxes the model sees are **normalised xyxy in [0, 1] relative to the padded square**.

The square has side ``max(width, height)``. The image sits in its top-left corner
(``pad_mode="top_left"``, this project's models) or in its centre (``"center"``, the released
models), at offset ``(offset_x, offset_y)``; the forward map is ``(b + offset) / side`` and its
inverse ``b * side - offset`` (then clipped to the image).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.ops import clip_boxes_to_image

from upn.image_processing import resize_normalize, to_rgb_image

from .utils.boxes import check_boxes

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(path) -> Image.Image:
    """Open an image file fully (a truncated file fails here) and return it as RGB.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, or not a readable image (including decompression-bomb sized images).
    """
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not an image file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb_image(img)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None


PAD_MODES = ("top_left", "center")


@dataclass
class ImageMeta:
    """What is needed to map boxes back to original pixels: the original size and where the
    image sits in its padded square (see :meth:`ChatRexImageProcessor.image_meta`)."""

    width: int
    height: int
    offset_x: int = 0
    offset_y: int = 0

    @property
    def side(self) -> int:
        return max(self.width, self.height)


@dataclass
class ChatRexImageProcessor:
    """Pads to a square, resizes for the low- and high-resolution encoders, normalises.

    Attributes:
        low_size: input side of the low-resolution (CLIP) encoder, e.g. 336.
        high_size: input side of the high-resolution (ConvNeXt) encoder, e.g. 768.
        image_mean, image_std: per-channel normalisation (CLIP statistics by default, which is
            what both CLIP encoders of the full-size model were trained with).
        pad_value: RGB fill of the padding, the mean colour, as LLaVA does (default: the
            mean rounded; the released models' code truncates it, ``(122, 116, 104)``).
        pad_mode: ``"top_left"`` (the image in the square's top-left corner) or ``"center"``
            (centred, as the released models were trained).
        low_from_high: take the low-resolution input as a bilinear downsample of the normalised
            high-resolution tensor (the released models) instead of resizing the image again.
    """

    low_size: int = 336
    high_size: int = 768
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    max_objects: int = 100
    pad_value: tuple[int, int, int] = field(default=None)  # type: ignore[assignment]
    pad_mode: str = "top_left"
    low_from_high: bool = False

    def __post_init__(self):
        for name in ("low_size", "high_size", "max_objects"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.image_mean = tuple(float(x) for x in self.image_mean)
        self.image_std = tuple(float(x) for x in self.image_std)
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"image_mean/image_std must be 3 values with std > 0, got {self.image_mean}, {self.image_std}")
        if self.pad_value is None:
            self.pad_value = tuple(int(round(m * 255)) for m in self.image_mean)
        self.pad_value = tuple(int(x) for x in self.pad_value)
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        self.low_from_high = bool(self.low_from_high)

    def to_dict(self) -> dict:
        return asdict(self)

    def image_meta(self, width: int, height: int) -> ImageMeta:
        """Where an image of ``width`` x ``height`` sits in its padded square."""
        side = max(width, height)
        if self.pad_mode == "center":
            # Integer offsets, as PIL pastes: (side - short) // 2 on the short axis.
            return ImageMeta(width, height, (side - width) // 2, (side - height) // 2)
        return ImageMeta(width, height)

    def pad_to_square(self, image: Image.Image) -> Image.Image:
        side = max(image.width, image.height)
        if image.width == image.height:
            return image
        meta = self.image_meta(image.width, image.height)
        canvas = Image.new("RGB", (side, side), self.pad_value)
        canvas.paste(image, (meta.offset_x, meta.offset_y))
        return canvas

    def _to_tensor(self, image: Image.Image, size: int) -> torch.Tensor:
        return resize_normalize(image, (size, size), self.image_mean, self.image_std, Image.BICUBIC)

    def preprocess(self, image) -> tuple[torch.Tensor, torch.Tensor, ImageMeta]:
        """Returns ``(low, high, meta)``: tensors (3, low_size, low_size) and (3, high_size, high_size)."""
        rgb = to_rgb_image(image)
        square = self.pad_to_square(rgb)
        high = self._to_tensor(square, self.high_size)
        if self.low_from_high:
            low = F.interpolate(high[None], size=(self.low_size, self.low_size), mode="bilinear", align_corners=False)[0]
        else:
            low = self._to_tensor(square, self.low_size)
        return low, high, self.image_meta(rgb.width, rgb.height)

    def _offsets(self, meta: ImageMeta) -> np.ndarray:
        return np.array([meta.offset_x, meta.offset_y, meta.offset_x, meta.offset_y], dtype=np.float64)

    def normalize_boxes(self, boxes, meta: ImageMeta) -> torch.Tensor:
        """Pixel xyxy in the original image (K, 4) -> normalised xyxy on the padded square (K, 4)."""
        clipped = check_boxes(boxes, meta.width, meta.height, self.max_objects)
        return torch.from_numpy((clipped + self._offsets(meta)) / meta.side).float()

    def denormalize_boxes(self, boxes, meta: ImageMeta) -> torch.Tensor:
        """Normalised xyxy on the padded square (K, 4) -> pixel xyxy in the original image (K, 4)."""
        b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4) * meta.side - torch.from_numpy(self._offsets(meta))
        return clip_boxes_to_image(b, (meta.height, meta.width)).float()

