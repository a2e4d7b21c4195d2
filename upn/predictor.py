"""UPNPredictor: image in, pixel-space proposals out."""
from __future__ import annotations

import os

import torch

from .config import ImageConfig
from .image_processing import preprocess
from .modeling import UPNModel
from .postprocess import Proposals, select_proposals

_PREDICT_TYPES = ("fine", "coarse", "both")


class UPNPredictor:
    """Wraps a ``UPNModel`` for single-image inference.

    The image is converted to RGB, resized with ``image_config`` (default: the
    model config's rule, short side 800 / cap 1333 for upn-large) and normalised.
    For ``prompt_type="both"`` the backbone and encoder run once and the decoder
    runs for each prompt.
    """

    def __init__(self, model: UPNModel, image_config: ImageConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.image_config = image_config if image_config is not None else model.config.image

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
                        image_config: ImageConfig | None = None) -> "UPNPredictor":
        return cls(UPNModel.from_pretrained(directory), image_config=image_config, device=device)

    def predict(self, image, prompt_type: str = "fine", min_score: float = 0.3,
                nms_iou: float = 0.8, max_boxes: int = 100) -> Proposals:
        """Proposals for one PIL image or numpy array (any size and mode).

        Returns boxes as pixel xyxy float32 in the original image, sorted by score;
        empty ``Proposals`` when nothing scores >= ``min_score``.
        """
        if prompt_type not in _PREDICT_TYPES:
            raise ValueError(f"prompt_type must be one of {_PREDICT_TYPES}, got {prompt_type!r}")
        if not 0.0 <= nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {nms_iou}")
        if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 0:
            raise ValueError(f"max_boxes must be an int >= 0, got {max_boxes!r}")
        pixel_values, size = preprocess(image, self.image_config)
        types = ["fine", "coarse"] if prompt_type == "both" else [prompt_type]
        with torch.inference_mode():
            state = self.model.encode(pixel_values[None].to(self.device))
            scores, boxes, gran = [], [], []
            for t in types:
                out = self.model.decode(state, t)
                scores.append(out.scores[0].float().cpu())
                boxes.append(out.boxes[0].float().cpu())
                gran += [t] * out.scores.shape[1]
        return select_proposals(torch.cat(scores), torch.cat(boxes), gran, size,
                                min_score, nms_iou, max_boxes)
