"""Stage 1: drop images not worth labelling.

Checks, in order (the first failing one is the reason):

- ``min_size``: both sides at least this many pixels.
- ``nsfw``: the input list's metadata flags the image (``{"nsfw": true}``); we do not run a
  classifier, the flag comes from upstream.
- ``low_content``: a plain or nearly empty image. Heuristic: on a 128 px grayscale copy, the
  pixel standard deviation is below ``min_std`` (flat colour) **or** fewer than
  ``min_edge_fraction`` of pixels have a gradient above ``edge_threshold`` (smooth gradients,
  blank pages). Photographs and the synthetic scenes sit far above both defaults.
- ``duplicate``: perceptual hash (``imagehash.phash``, 64 bits) within ``max_hash_distance``
  bits of an image kept earlier in input order. The hash is stored in ``scratch["phash"]``;
  the comparison is done by :class:`DuplicateFilter`, which both runners apply in input order
  so they keep the same images.
"""

from __future__ import annotations

import imagehash
import numpy as np

from ..sample import Sample
from .base import Stage, active


class DuplicateFilter:
    """Keeps the first image of each near-duplicate group, in the order images are offered.

    A linear scan over kept hashes: fine for the per-run sizes of the local runner and for the
    driver-side pass of the Ray runner (a BK-tree would be the next step past ~10^6 images).
    """

    def __init__(self, max_distance: int = 4):
        self.max_distance = max_distance
        self._kept: list[tuple[str, imagehash.ImageHash]] = []

    def seen(self, sample_id: str, phash_hex: str) -> str | None:
        """The id of an earlier near-duplicate, or ``None`` (and remember this one).

        Idempotent per id: the runner may offer an image again when it retries a failed batch
        one image at a time.
        """
        h = imagehash.hex_to_hash(phash_hex)
        for other_id, other in self._kept:
            if other_id == sample_id:
                return None
            if h - other <= self.max_distance:
                return other_id
        self._kept.append((sample_id, h))
        return None


class ImageFilter(Stage):
    name = "filter"
    version = "1"
    provides = ("phash",)

    def __init__(self, min_size: int = 64, reject_nsfw: bool = True, min_std: float = 4.0, edge_threshold: float = 8.0,
                 min_edge_fraction: float = 0.002, dedup: bool = True, max_hash_distance: int = 4):
        if min_size < 1:
            raise ValueError(f"filter.min_size must be >= 1, got {min_size}")
        if not 0 <= max_hash_distance <= 64:
            raise ValueError(f"filter.max_hash_distance must be in [0, 64], got {max_hash_distance}")
        self.min_size, self.reject_nsfw = min_size, reject_nsfw
        self.min_std, self.edge_threshold, self.min_edge_fraction = min_std, edge_threshold, min_edge_fraction
        self.dedup = dedup
        self.duplicates = DuplicateFilter(max_hash_distance)

    def content_stats(self, image) -> tuple[float, float]:
        """(grayscale std, fraction of edge pixels) on a 128 px thumbnail."""
        gray = image.convert("L")
        gray.thumbnail((128, 128))
        a = np.asarray(gray, dtype=np.float32)
        gy, gx = np.gradient(a) if min(a.shape) > 1 else (np.zeros_like(a), np.zeros_like(a))
        return float(a.std()), float((np.hypot(gx, gy) > self.edge_threshold).mean())

    def check(self, sample: Sample) -> str | None:
        """The reason to reject ``sample`` (decodes the image), or ``None``; sets scratch["phash"]."""
        image = sample.image
        sample.record.setdefault("width", image.width)
        sample.record.setdefault("height", image.height)
        if min(image.size) < self.min_size:
            return f"too small ({image.width}x{image.height} < {self.min_size} px)"
        if self.reject_nsfw and sample.meta.get("nsfw"):
            return "flagged nsfw in the input metadata"
        std, edges = self.content_stats(image)
        if std < self.min_std or edges < self.min_edge_fraction:
            return f"low content (std {std:.1f}, edge fraction {edges:.4f})"
        sample.scratch["phash"] = str(imagehash.phash(image))
        return None

    def process(self, samples: list[Sample]) -> None:
        for s in active(samples):
            reason = self.check(s)
            if reason is None and self.dedup:
                other = self.duplicates.seen(s.id, s.scratch["phash"])
                reason = None if other is None else f"duplicate of {other}"
            if reason is not None:
                s.reject(self.name, reason)
