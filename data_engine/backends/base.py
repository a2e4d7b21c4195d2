"""What the pipeline stages need from models: small protocols, one per job.

A backend is any object with the method(s) below plus ``provenance() -> dict`` (backend kind,
model name or path), which the stages copy into each record. Boxes are absolute pixel xyxy in
the image passed in. Backends are batched where a model can batch; the stages never look inside
a backend, so a ChatRex model, a Hugging Face checkpoint or a rule can stand behind each job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from PIL import Image

Box = Sequence[float]


@dataclass(frozen=True)
class GroundedBox:
    """One candidate box for a phrase: ``box`` pixel xyxy, ``score`` in [0, 1]."""

    phrase: str
    box: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class RegionText:
    """Region captions at three levels for one box."""

    category: str
    phrase: str
    description: str


@runtime_checkable
class Captioner(Protocol):
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per image that mentions its main objects."""

    def provenance(self) -> dict: ...


@runtime_checkable
class Grounder(Protocol):
    def ground(self, images: Sequence[Image.Image], phrases: Sequence[Sequence[str]]) -> list[list[GroundedBox]]:
        """For image ``i``, candidate boxes for each of ``phrases[i]`` (any number per phrase,
        unfiltered; the grounding stage applies score thresholds, NMS and assignment)."""

    def provenance(self) -> dict: ...


@runtime_checkable
class RegionCaptioner(Protocol):
    def describe(self, image: Image.Image, boxes: Sequence[Box], phrases: Sequence[str]) -> list[RegionText]:
        """Captions for each box of ``image``, conditioned on the phrase it was grounded from."""

    def provenance(self) -> dict: ...


@runtime_checkable
class Verifier(Protocol):
    def consistent(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """For each ``(phrase, description)``: does the description fit the phrase?"""

    def provenance(self) -> dict: ...


@runtime_checkable
class Rewriter(Protocol):
    def referring(self, image: Image.Image, boxes: Sequence[Box], index: int, region: RegionText) -> str:
        """A short expression meant to pick out ``boxes[index]`` alone among ``boxes``
        (the verify stage checks uniqueness by grounding it again)."""

    def provenance(self) -> dict: ...
