"""UPNPredictor: images in, pixel-space proposals out."""
from __future__ import annotations

import importlib.util
import os

import torch

from .config import ImageConfig
from .image_processing import pad_batch, preprocess
from .modeling import UPNModel
from .postprocess import Proposals, select_proposals

_PREDICT_TYPES = ("fine", "coarse", "both")

# Trained weights that ship with the project, by name: (package, folder inside it). upn-tiny was
# trained with the bundled chatrex-tiny and ships inside its folder in the ``chatrex`` package.
# ``upn`` must not import ``chatrex`` (chatrex depends on upn, not the other way), so the folder
# is located with ``importlib.util.find_spec``, which finds a top-level package without running
# it. A fixed table rather than a registry chatrex fills in: no import order to get right and
# no mutable global state.
PRETRAINED = {"upn-tiny": ("chatrex", "bundled/chatrex-tiny/upn")}


def pretrained_path(name: str) -> str:
    """The folder of the named weights in :data:`PRETRAINED`. ``ValueError`` lists the known
    names; ``FileNotFoundError`` when the package that ships them is not installed."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown UPN weights {name!r}; known names: {', '.join(sorted(PRETRAINED))}")
    package, folder = PRETRAINED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"UPN weights {name!r} ship with the {package!r} package, which is not installed")
    return os.path.join(spec.submodule_search_locations[0], *folder.split("/"))


def resolve_weights(name_or_path: str | os.PathLike) -> str:
    """A path that exists, as it is; a name of :data:`PRETRAINED` as its folder; otherwise
    ``FileNotFoundError`` at once, naming what may be given (a missing local path is never
    looked up anywhere else). Hugging Face hub ids are the caller's to resolve first (the
    ``chatrex`` CLI and ``chatrex.hub`` do): this package reads local files only."""
    path = os.fspath(name_or_path)
    if os.path.exists(path):
        return path
    if path in PRETRAINED:
        return pretrained_path(path)
    raise FileNotFoundError(f"UPN weights {path!r} do not exist: give a folder with config.json and model.safetensors, "
                            f"the official upn_large.pth / upn_tiny.pth file, or a bundled name ({', '.join(sorted(PRETRAINED))})")


class UPNPredictor:
    """Wraps a ``UPNModel`` for inference.

    Images are converted to RGB, resized with ``image_config`` (default: the model
    config's rule, short side 800 / cap 1333 for upn-large) and normalised. For
    ``prompt_type="both"`` the backbone and encoder run once and the decoder runs
    for each prompt.
    """

    def __init__(self, model: UPNModel, image_config: ImageConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        self.model = model.to(self.device).eval()
        self.image_config = image_config if image_config is not None else model.config.image

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        image_config: ImageConfig | None = None) -> "UPNPredictor":
        """Load a converted folder (``config.json`` + ``model.safetensors``) or bundled weights by
        name (``"upn-tiny"``, :data:`PRETRAINED`). An official ``upn_large.pth`` is converted by
        ``chatrex`` (this package imports nothing from it): once with ``chatrex convert upn``, or
        in memory with ``chatrex.convert.upn.load_upn_predictor``; a file here is a ``ValueError``
        that says so."""
        path = resolve_weights(path)
        if os.path.isfile(path):
            raise ValueError(f"{path} is a file (an official checkpoint such as upn_large.pth?); UPNPredictor.from_pretrained "
                             f"loads a converted folder. Convert it once with `chatrex convert upn {path} OUT/`, or load it "
                             f"in memory with chatrex.convert.upn.load_upn_predictor({path!r})")
        return cls(UPNModel.from_pretrained(path), image_config=image_config, device=device)

    def _check_args(self, prompt_type: str, nms_iou: float, max_boxes: int) -> None:
        if prompt_type not in _PREDICT_TYPES:
            raise ValueError(f"prompt_type must be one of {_PREDICT_TYPES}, got {prompt_type!r}")
        if not 0.0 <= nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {nms_iou}")
        if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 0:
            raise ValueError(f"max_boxes must be an int >= 0, got {max_boxes!r}")

    def predict(self, image, prompt_type: str = "fine", min_score: float = 0.3,
                nms_iou: float = 0.8, max_boxes: int = 100) -> Proposals:
        """Proposals for one PIL image or numpy array (any size and mode).

        Returns boxes as pixel xyxy float32 in the original image, sorted by score;
        empty ``Proposals`` when nothing scores >= ``min_score``.
        """
        return self.predict_batch([image], prompt_type, min_score, nms_iou, max_boxes)[0]

    def predict_batch(self, images: list, prompt_type: str = "fine", min_score: float = 0.3,
                      nms_iou: float = 0.8, max_boxes: int = 100) -> list[Proposals]:
        """``predict`` for several images of any sizes in one forward pass: they are
        zero-padded bottom/right to a common size and the padding is masked out.

        Images of one resized size (no padding) get ``predict``'s boxes; scores may differ by
        about 1e-6 (batched matmuls). A padded image does not: the backbone's convolutions and
        GroupNorm see the padded area, so its features, and with them its boxes, change (see
        docs/upn.md). To batch without that effect, group images by resized size first, as
        ``data_engine.proposals.predict_grouped`` does."""
        self._check_args(prompt_type, nms_iou, max_boxes)
        if not images:
            return []
        prepared = [preprocess(im, self.image_config) for im in images]
        pixel_values, pixel_mask = pad_batch([p[0] for p in prepared])
        types = ["fine", "coarse"] if prompt_type == "both" else [prompt_type]
        with torch.inference_mode():
            state = self.model.encode(pixel_values.to(self.device), pixel_mask.to(self.device))
            outs = [self.model.decode(state, t) for t in types]
        results = []
        for i, (_, size) in enumerate(prepared):
            scores = torch.cat([o.scores[i].float().cpu() for o in outs])
            boxes = torch.cat([o.boxes[i].float().cpu() for o in outs])
            gran = [t for t, o in zip(types, outs) for _ in range(o.scores.shape[1])]
            results.append(select_proposals(scores, boxes, gran, size, min_score, nms_iou, max_boxes,
                                            clip=self.image_config.clip_boxes))
        return results
