"""The oracle backend: answers every model job from ground-truth records (e.g. the synthetic
world's). Two uses:

- an upper bound when measuring the engine: with perfect models, what is lost is lost by the
  pipeline's own logic (phrase extraction, thresholds, assignment, verify);
- fast, exact, model-free runs in tests (runner resumption, Ray vs local).

Images are matched to records by a hash of their decoded RGB pixels, so the oracle works on the
PIL images the stages pass, wherever the files live. ``model`` is the records.jsonl path.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Sequence

import torch
from torchvision.ops import box_iou

from chatrex.image_processing_chatrex import load_image, to_rgb_image
from chatrex.text.markup import SPAN, object_indices
from chatrex.utils.jsonl import read_jsonl

from .base import GroundedBox, RegionText
from .rules import COLOURS, singular

_WORD = re.compile(r"[a-z][a-z-]*")


def _pixels_key(image) -> str:
    return hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()


class OracleBackend:
    """Captioner, Grounder, RegionCaptioner and Rewriter from records (see ``backends.base``)."""

    def __init__(self, model: str):
        if not os.path.isfile(model):
            raise ValueError(f"oracle backend: records file {model!r} does not exist")
        self.model = model
        root = os.path.dirname(os.path.abspath(model))
        self._records: dict[str, dict] = {}
        for rec in read_jsonl(model):
            path = rec["image"] if os.path.isabs(rec["image"]) else os.path.join(root, rec["image"])
            self._records[_pixels_key(load_image(path))] = rec

    def provenance(self) -> dict:
        return {"backend": "oracle", "model": self.model}

    def record(self, image) -> dict:
        # The same conversion load_image applied to the records' images, so an RGBA or palette
        # image matches its record.
        rec = self._records.get(_pixels_key(to_rgb_image(image)))
        if rec is None:
            raise ValueError("oracle backend: image not found in the ground-truth records")
        return rec

    def caption(self, images) -> list[str]:
        return [self.record(im).get("caption", "") for im in images]

    def _matches(self, rec: dict, phrase: str) -> list[int]:
        """Regions a phrase names: a region's referring expression, an exact grounded-caption
        span, else head noun + colours."""
        regions = rec.get("regions", [])
        exact = [i for i, r in enumerate(regions) if r.get("referring", "").lower() == phrase.lower()]
        if exact:
            return exact
        for text, objs in SPAN.findall(rec.get("grounded_caption", "")):
            if text.strip().lower().removeprefix("the ").removeprefix("a ").removeprefix("an ") == phrase.lower().removeprefix("the "):
                return object_indices(objs)
        words = [singular(w) for w in _WORD.findall(phrase.lower())]
        if not words:
            return []
        colours = [w for w in words if w in COLOURS]
        out = []
        for i, r in enumerate(regions):
            attrs = r.get("attributes") or {}
            if r.get("category") == words[-1] and all(attrs.get("color") == c for c in colours):
                out.append(i)
        return out

    def ground(self, images, phrases: Sequence[Sequence[str]]) -> list[list[GroundedBox]]:
        out = []
        for image, texts in zip(images, phrases):
            rec = self.record(image)
            regions = rec.get("regions", [])
            out.append([GroundedBox(t, tuple(regions[i]["box"]), 1.0) for t in texts for i in self._matches(rec, t)])
        return out

    def _region(self, image, box) -> dict:
        regions = self.record(image).get("regions", [])
        if not regions:
            raise ValueError("oracle backend: the record has no regions")
        iou = box_iou(torch.tensor([list(box)], dtype=torch.float32), torch.tensor([r["box"] for r in regions], dtype=torch.float32))[0]
        return regions[int(iou.argmax())]

    def describe(self, image, boxes, phrases) -> list[RegionText]:
        return [RegionText(r.get("category", ""), r.get("phrase", ""), r.get("description", "")) for r in (self._region(image, b) for b in boxes)]

    def referring(self, image, boxes, index: int, region: RegionText) -> str:
        return self._region(image, boxes[index]).get("referring", "")
