"""Stage 5: captions for every grounded region, conditioned on its phrase.

Fills ``category``, ``phrase`` (the region's own short phrase, e.g. "cyan boat" for a box
grounded from "four boats") and ``description`` of each region.
"""

from __future__ import annotations

from ..backends.base import RegionCaptioner
from ..sample import Sample
from .base import Stage, active


class RegionCaptionStage(Stage):
    name = "region_caption"
    version = "1"
    requires = ("regions", "region_phrase")
    provides = ("region_text",)
    uses_model = True

    def __init__(self, captioner: RegionCaptioner):
        self.captioner = captioner

    def process(self, samples: list[Sample]) -> None:
        for s in active(samples):
            regions = s.record["regions"]
            phrases = [s.scratch["phrases"][p]["text"] for p in s.scratch["region_phrase"]]
            texts = self.captioner.describe(s.image, [r["box"] for r in regions], phrases)
            assert len(texts) == len(regions), f"region captioner returned {len(texts)} results for {len(regions)} boxes"
            for region, text in zip(regions, texts):
                region["category"] = text.category.strip() or region["phrase"].split()[-1]
                region["phrase"] = text.phrase.strip() or region["phrase"]
                region["description"] = text.description.strip() or region["phrase"]

    def provenance(self) -> dict:
        return {**self.captioner.provenance(), "version": self.version}
