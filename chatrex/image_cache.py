"""The predictor's encoded images: proposals, both vision encoders and box tokens, computed once
per image and kept in a small LRU so later questions (and ``set_image`` on an image seen
recently) reuse them. Many images are encoded as one batch."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from upn.image_processing import to_rgb_image

from .image_processing_chatrex import ImageMeta
from .modeling_chatrex import ChatRexImageFeatures
from .prompt_cache import PromptPrefix


@dataclass
class EncodedImage:
    """One image, ready for questions. ``boxes`` (K, 4) pixel xyxy in the original image, in
    index order; ``scores`` (K,) the proposal scores (1 for given boxes)."""

    meta: ImageMeta
    features: ChatRexImageFeatures  # batch 1
    boxes: torch.Tensor
    scores: torch.Tensor
    granularity: list[str]
    object_features: list[torch.Tensor]  # one (K, H) tensor
    # The LLM state after the image and box tokens, computed at the first question and shared
    # by every later one (``chatrex.prompt_cache``); keyed by the prefix token ids.
    prefixes: dict[tuple[int, ...], PromptPrefix] = field(default_factory=dict)


def image_key(rgb, boxes) -> str:
    """Same pixels and same box list (or the proposal network's): same key."""
    digest = hashlib.sha1(rgb.tobytes())
    digest.update(repr(rgb.size).encode())
    if boxes is None:
        digest.update(b"upn")
    else:
        arr = np.asarray(boxes, dtype=np.float64)
        digest.update(b"boxes" + repr(arr.shape).encode() + arr.tobytes())
    return digest.hexdigest()


class ImageCache:
    """The ``size`` most recently used encoded images, by :func:`image_key`."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"cache_size must be >= 1, got {size}")
        self.size = size
        self._items: OrderedDict[str, EncodedImage] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def get(self, images: list, boxes: list | None, encode: Callable[[list, list], list[EncodedImage]]) -> list[EncodedImage]:
        """The encodings of ``images`` (each with ``boxes[i]``, or ``None`` for proposals); those
        not cached go to ``encode(rgbs, boxes)`` together, each distinct image once."""
        rgbs = [to_rgb_image(im) for im in images]
        boxes = [None] * len(rgbs) if boxes is None else list(boxes)
        if len(boxes) != len(rgbs):
            raise ValueError(f"{len(rgbs)} images but {len(boxes)} box lists")
        keys = [image_key(rgb, b) for rgb, b in zip(rgbs, boxes)]
        todo = {k: i for i, k in reversed(list(enumerate(keys))) if k not in self._items}  # key -> its first image
        if todo:
            self._items.update(zip(todo, encode([rgbs[i] for i in todo.values()], [boxes[i] for i in todo.values()])))
        found = [self._items[k] for k in keys]
        for k in keys:
            self._items.move_to_end(k)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return found


def encode_images(model, image_processor, propose_batch, rgbs: list, boxes: list, device) -> list[EncodedImage]:
    """Encode RGB images in one batch: the proposal network (``propose_batch``) for those
    whose ``boxes[i]`` is ``None``, both vision encoders, and one token per box."""
    ip = image_processor
    need_upn = [i for i, b in enumerate(boxes) if b is None]
    props = dict(zip(need_upn, propose_batch([rgbs[i] for i in need_upn]))) if need_upn else {}
    metas, normalized, extras = [], [], []
    for i, rgb in enumerate(rgbs):
        meta = ip.image_meta(rgb.width, rgb.height)
        if i in props:
            pixel = props[i].boxes.float()
            extras.append((props[i].scores.float(), list(props[i].granularity)))
        else:
            pixel = torch.from_numpy(np.asarray(boxes[i], dtype=np.float64).reshape(-1, 4)).float()
            extras.append((torch.ones(len(pixel)), ["given"] * len(pixel)))
        metas.append(meta)
        normalized.append(ip.normalize_boxes(pixel.numpy(), meta))  # validates and clips
    pixels = [ip.preprocess(rgb)[:2] for rgb in rgbs]
    with torch.inference_mode():
        low = torch.stack([p[0] for p in pixels]).to(device)
        high = torch.stack([p[1] for p in pixels]).to(device)
        features = model.get_image_features(low, high)
        objects = model.get_object_features(features.high_res_features, [n.to(device) for n in normalized])
    out = []
    for j, (meta, norm, (scores, granularity)) in enumerate(zip(metas, normalized, extras)):
        one = ChatRexImageFeatures(image_embeds=features.image_embeds[j : j + 1], high_res_features=tuple(f[j : j + 1] for f in features.high_res_features))
        out.append(EncodedImage(meta, one, ip.denormalize_boxes(norm, meta), scores, granularity, [objects[j]]))
    return out
