"""Perfect object features, for measuring the LLM's ceiling (MODEL_CARD.md).

Each box of a box list is given a feature that states its true attributes: the box is matched
to the record's best-overlapping region (IoU >= 0.5) and its feature is the sum of a fixed random
code per field value (category, colour, pattern, size, granularity; ``background`` for a box
that matches no region) plus the box's sine position embedding, as the object encoder adds it.
With ``parent`` a part's feature also carries its object's category and attributes (the
record's ``parent`` region), which measures how much of the part expressions' errors is the
LLM failing to tell which object a part belongs to.
The codes are random but fixed (seeded by the field and value), and the object projector that
follows is trained, so together they are a learned embedding of the attributes. Whatever the
LLM and pointer head fail to learn from these features, they would fail to learn from any.

* :class:`OracleFeatureCache` wraps a :class:`train.feature_cache.FeatureCache`: the real image
  tokens, oracle box rows. The trainer uses it with ``data.oracle_object_features: true``.
* :class:`OracleFeaturePredictor` is a ``ChatRexPredictor`` that swaps each image's box tokens
  for oracle ones, so ``chatrex eval``'s protocol and :mod:`.error_causes` run unchanged.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torchvision.ops import box_convert, box_iou

from chatrex.layers.object_encoder import box_sine_embedding
from chatrex.predictor import ChatRexPredictor

FIELDS = ("category", "color", "pattern", "size", "granularity")
IOU = 0.5


class OracleFeatures:
    """``codes(regions, boxes, width, height)`` -> (K, C) features for pixel xyxy ``boxes``."""

    def __init__(self, config, image_processor, seed: int = 0, parent: bool = False):
        self.dim = config.object_feature_dim
        self.parent = parent
        self.temperature, self.scale, self.order = config.pos_embed_temperature, config.pos_embed_scale, config.box_embed_order
        self.image_processor = image_processor
        self.seed = seed
        self._codes: dict[str, torch.Tensor] = {}

    def code(self, field: str, value) -> torch.Tensor:
        key = f"{field}={value}"
        if key not in self._codes:
            seed = int.from_bytes(hashlib.sha256(f"{self.seed}:{key}".encode()).digest()[:8], "little")
            self._codes[key] = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)) / len(FIELDS) ** 0.5
        return self._codes[key]

    def region_code(self, region: dict | None, parent: dict | None = None) -> torch.Tensor:
        """The attribute codes of ``region``; with ``parent`` (the object a part belongs to), its
        codes too, under their own fields, so a part's token also says whose part it is."""
        if region is None:
            return self.code("category", "background")
        attrs = region.get("attributes") or {}
        values = {"category": region["category"], "granularity": region.get("granularity", "coarse"), **{f: attrs.get(f) for f in ("color", "pattern", "size")}}
        code = sum(self.code(f, values[f]) for f in FIELDS)
        if parent is not None:
            code = code + sum(self.code(f"parent {f}", v) for f, v in [("category", parent["category"]), *(parent.get("attributes") or {}).items()])
        return code

    def _parent(self, region: dict | None, regions: list[dict]) -> dict | None:
        if not self.parent or region is None or not isinstance(region.get("parent"), int) or not 0 <= region["parent"] < len(regions):
            return None
        return regions[region["parent"]]

    def codes(self, regions: list[dict], boxes, width: int, height: int) -> torch.Tensor:
        boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float64), dtype=torch.float32).reshape(-1, 4)
        if not len(boxes):
            return torch.zeros((0, self.dim))
        if regions:
            iou = box_iou(boxes, torch.tensor([r["box"] for r in regions], dtype=torch.float32))
            best, which = iou.max(1)
            matched = [regions[int(j)] if v >= IOU else None for v, j in zip(best, which)]
        else:
            matched = [None] * len(boxes)
        feats = torch.stack([self.region_code(r, self._parent(r, regions)) for r in matched])
        meta = self.image_processor.image_meta(width, height)
        offsets = torch.tensor([meta.offset_x, meta.offset_y, meta.offset_x, meta.offset_y], dtype=torch.float32)
        norm = (boxes + offsets) / max(width, height)
        return feats + box_sine_embedding(box_convert(norm, "xyxy", "cxcywh"), self.dim, self.temperature, self.scale, self.order)


class OracleFeatureCache:
    """A feature cache whose box rows are oracle features; image tokens stay the real ones."""

    def __init__(self, cache, records, oracle: OracleFeatures):
        if len(cache) != len(records):
            raise ValueError(f"the feature cache has {len(cache)} records but the records file {len(records)}")
        self.cache, self.records, self.oracle = cache, records, oracle
        self.use_proposals = cache.use_proposals

    def __len__(self) -> int:
        return len(self.cache)

    def bad_reason(self, i: int):
        return self.cache.bad_reason(i)

    def size(self, i: int):
        return self.cache.size(i)

    def get(self, i: int):
        from ..feature_cache import candidate_boxes

        fused, pooled = self.cache.get(i)
        record = self.records[i]
        width, height = self.cache.size(i)
        codes = self.oracle.codes(record.get("regions", []), candidate_boxes(record, width, height, self.use_proposals), width, height)
        if len(codes) != len(pooled):
            raise RuntimeError(f"record {i}: {len(codes)} candidate boxes but {len(pooled)} cached rows: rebuild the cache")
        return fused, codes.to(pooled.dtype)


class OracleFeaturePredictor(ChatRexPredictor):
    """A predictor whose box tokens are oracle features of the records given to
    :meth:`use_records` (images are recognised by their pixels)."""

    def use_records(self, records: list[dict], parent: bool = False) -> None:
        from chatrex.image_processing_chatrex import load_image
        from upn.image_processing import to_rgb_image

        self.oracle = OracleFeatures(self.model.config, self.processor.image_processor, parent=parent)
        self._by_pixels = {hashlib.sha1(to_rgb_image(load_image(r["image"])).tobytes()).hexdigest(): r for r in records}
        self._to_rgb = to_rgb_image

    def set_image(self, image, boxes=None) -> int:
        n = super().set_image(image, boxes)
        rgb = self._to_rgb(image)
        record = self._by_pixels.get(hashlib.sha1(rgb.tobytes()).hexdigest())
        if record is None:
            raise KeyError("image not among the records given to use_records()")
        cache = self._cache
        codes = self.oracle.codes(record.get("regions", []), cache.boxes.numpy(), rgb.width, rgb.height)
        with torch.inference_mode():
            cache.object_features = [self.model.model.project_objects([codes.to(self.device)])[0]]
        cache.prefixes.clear()
        return n
