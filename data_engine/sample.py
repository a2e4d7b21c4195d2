"""``Sample``: one image travelling through the pipeline, and its record under construction.

Stages read and extend ``record`` (the docs/records.md schema) and keep working data that is not
part of the final record in ``scratch`` (e.g. extracted phrases before grounding). A stage that
rejects an image sets ``rejected`` to ``"<stage>: <reason>"``; later stages pass it through
untouched. Samples cross process boundaries (Ray) as JSON rows, so everything in them is plain
JSON; the decoded image is cached per process and never serialised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from PIL import Image

from chatrex.image_processing_chatrex import load_image


@dataclass
class Sample:
    id: str
    """Stable id: a hash of the image bytes (so the same file gets the same id wherever it lives)."""
    path: str
    """Absolute image path."""
    record: dict = field(default_factory=dict)
    scratch: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    """Input metadata from the image list (e.g. ``{"nsfw": true}``)."""
    rejected: str | None = None
    failure: dict | None = None
    """``{"stage", "error"}`` when a stage raised on this image."""
    _image: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def image(self) -> Image.Image:
        """The decoded RGB image, loaded on first use (raises ``ValueError``/``OSError`` if unreadable)."""
        if self._image is None:
            self._image = load_image(self.path)
        return self._image

    def reject(self, stage: str, reason: str) -> None:
        self.rejected = f"{stage}: {reason}"

    def fail(self, stage: str, error: str) -> None:
        self.failure = {"stage": stage, "error": error.strip()}

    def to_row(self) -> dict:
        """A JSON-safe row (Ray Data batches, shard files)."""
        return {"id": self.id, "path": self.path, "payload": json.dumps({"record": self.record, "scratch": self.scratch, "meta": self.meta, "rejected": self.rejected, "failure": self.failure})}

    @classmethod
    def from_row(cls, row: dict) -> "Sample":
        payload = json.loads(row["payload"])
        return cls(id=str(row["id"]), path=str(row["path"]), record=payload["record"], scratch=payload["scratch"], meta=payload["meta"], rejected=payload["rejected"], failure=payload["failure"])
