"""The default backends: the bundled ChatRex (``chatrex-tiny`` + ``upn-tiny``) does captioning,
grounding, region captioning and referring rewrites, so an engine run works out of the box.

All jobs share one :class:`~chatrex.ChatRexPredictor` per model name and process, whose image
cache means an image is encoded once for all of its questions. Captions batch the images of a
call (proposals, encoders and generation), and grounding batches each image's phrases over its
shared prefix; the answers are those of one question at a time.
"""

from __future__ import annotations

import functools
from typing import Sequence

from PIL import Image

from chatrex.text import prompts

from .base import GroundedBox, RegionText
from .rules import singular

NUMBER_WORDS = frozenset("two three four five six seven eight nine ten eleven twelve several many some".split())


@functools.lru_cache(maxsize=4)
def shared_predictor(model: str, device: str = "cpu"):
    from chatrex import ChatRexPredictor

    return ChatRexPredictor.from_pretrained(model, device=device)


class ChatRexBackend:
    """Captioner, Grounder, RegionCaptioner and Rewriter in one object (see ``backends.base``).

    Args:
        model: bundled name or ChatRex folder with a ``upn/`` subfolder.
        caption_prompt: question used for captions; the grounded-caption prompt by default,
            because the bundled model was trained on it most (its spans are dropped).
    """

    def __init__(self, model: str = "chatrex-tiny", device: str = "cpu", caption_prompt: str | None = None, max_new_tokens: int = 96):
        self.model, self.device = model, device
        self.caption_prompt = caption_prompt or prompts.GROUNDED_CAPTION[0]
        self.max_new_tokens = max_new_tokens

    @property
    def predictor(self):
        return shared_predictor(self.model, self.device)

    def provenance(self) -> dict:
        return {"backend": "chatrex", "model": self.model}

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        answers = self.predictor.ask_images(list(images), self.caption_prompt, max_new_tokens=self.max_new_tokens)
        return [a.text.strip() for a in answers]

    @staticmethod
    def query(phrase: str) -> tuple[str, str]:
        """(query text, kind) for a caption phrase. Counted plurals ("four boats") become the
        category query the model was trained on ("boat"); the rest go through ``auto``."""
        words = phrase.split()
        if len(words) >= 2 and (words[0].lower() in NUMBER_WORDS or words[0].isdigit()):
            return " ".join(words[1:-1] + [singular(words[-1].lower())]), "category" if len(words) == 2 else "phrase"
        return phrase, "auto"

    def ground(self, images: Sequence[Image.Image], phrases: Sequence[Sequence[str]]) -> list[list[GroundedBox]]:
        # The model retrieves boxes without a score of its own; the proposal score stands in.
        out = []
        for image, texts in zip(images, phrases):
            self.predictor.set_image(image)
            queries = [self.query(text) for text in texts]
            dets = self.predictor.detect_batch([q for q, _ in queries], kind=[k for _, k in queries])
            out.append([GroundedBox(text, tuple(box), score) for text, det in zip(texts, dets) for box, score in zip(det.boxes, det.scores)])
        return out

    def describe(self, image: Image.Image, boxes, phrases: Sequence[str]) -> list[RegionText]:
        self.predictor.set_image(image)
        return [
            RegionText(
                category=self.predictor.describe(list(box), "category"),
                phrase=self.predictor.describe(list(box), "phrase"),
                description=self.predictor.describe(list(box), "description"),
            )
            for box in boxes
        ]

    def referring(self, image: Image.Image, boxes, index: int, region: RegionText) -> str:
        self.predictor.set_image(image)
        return self.predictor.describe(list(boxes[index]), "referring")
