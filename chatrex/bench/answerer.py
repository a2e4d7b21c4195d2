"""What a benchmark needs from a model: proposals under the protocol, and grounded answers.

:class:`PredictorAnswerer` wraps :class:`chatrex.predictor.ChatRexPredictor`. Tests swap in a
fake with the same two methods, whose answers are known, to check the metrics by hand.
"""

from __future__ import annotations

import numpy as np

from .protocol import ProposalProtocol


def sort_proposals(boxes, scores, decimals: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Round ``scores`` to ``decimals`` and sort by score, highest first. The sort is stable,
    so proposals with equal rounded scores keep UPN's order: ``<obj0>`` is always the same box
    for the same UPN output, and mAP does not depend on how a sort breaks ties.

    Args:
        boxes: (K, 4) pixel xyxy; scores: (K,).
    Returns:
        ``(boxes (K, 4) float64, scores (K,) float64)``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if decimals is not None:
        scores = np.round(scores, decimals)
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


class PredictorAnswerer:
    """A :class:`~chatrex.predictor.ChatRexPredictor` under a :class:`ProposalProtocol`."""

    def __init__(self, predictor, proposals: ProposalProtocol):
        limit = predictor.processor.image_processor.max_objects
        if proposals.max_proposals > limit:
            raise ValueError(f"max_proposals {proposals.max_proposals} exceeds the model's {limit} object tokens")
        if predictor.upn is None:
            raise ValueError("the model has no proposal network: pass --upn or use a folder with upn/")
        self.predictor = predictor
        self.protocol = proposals

    @property
    def prompts(self):
        return self.predictor.prompts

    def proposals(self, image) -> tuple[np.ndarray, np.ndarray]:
        """UPN boxes (K, 4) pixel xyxy and their scores (K,), sorted as :func:`sort_proposals`."""
        return self.proposals_batch([image])[0]

    def proposals_batch(self, images: list) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`proposals` of several images in one UPN forward pass (padded and masked)."""
        p = self.protocol
        props = self.predictor.upn.predict_batch(images, prompt_type=p.prompt, min_score=p.min_score,
                                                 nms_iou=1.0 if p.nms_iou is None else p.nms_iou, max_boxes=p.max_proposals)
        return [sort_proposals(x.boxes.double().numpy(), x.scores.double().numpy(), p.score_decimals) for x in props]

    def answer(self, image, boxes: np.ndarray, question: str) -> tuple[str, list[tuple[str, list[int]]]]:
        """Ask ``question`` about ``image`` with ``boxes`` as the object tokens.

        Returns ``(raw answer, [(grounded phrase, box indices), ...])`` in answer order.
        """
        if len(boxes) == 0:  # no proposal: nothing can be named, and the model needs no call
            return "", []
        self.predictor.set_image(image, boxes=boxes)  # cached: several questions encode once
        answer = self.predictor.ask(question)
        return answer.raw, [(s.phrase, list(s.indices)) for s in answer.spans]
