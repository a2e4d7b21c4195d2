"""Stage 2: one caption per image that mentions its main objects (``record["caption"]``)."""

from __future__ import annotations

from ..backends.base import Captioner
from ..sample import Sample
from .base import Stage, active


class CaptionStage(Stage):
    name = "caption"
    version = "1"
    provides = ("caption",)
    uses_model = True

    def __init__(self, captioner: Captioner):
        self.captioner = captioner

    def process(self, samples: list[Sample]) -> None:
        todo = active(samples)
        if not todo:
            return
        captions = self.captioner.caption([s.image for s in todo])
        assert len(captions) == len(todo), f"captioner returned {len(captions)} captions for {len(todo)} images"
        for s, caption in zip(todo, captions):
            caption = " ".join(str(caption).split())
            if not caption:
                s.reject(self.name, "empty caption")
            else:
                s.record["caption"] = caption

    def provenance(self) -> dict:
        return {**self.captioner.provenance(), "version": self.version}
