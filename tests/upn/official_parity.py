"""Compare our UPN with the official code's recorded outputs (``tools/oracle/make_upn_fixture.py``).

Shared by ``test_official_parity.py`` (the reduced CI fixture) and by hand for the
full-size fixture::

    python -m tests.upn.official_parity /path/to/full_fixture
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from chatrex.convert.upn import (
    infer_config,
    official_to_ours,
    ours_to_official,
    relative_position_index,
    synthetic_official_state,
)
from upn import UPNModel, UPNPredictor
from upn.image_processing import preprocess
from upn.postprocess import select_proposals

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "upn_official")
PROMPTS = ("fine", "coarse")


def photo() -> Image.Image:
    spec = importlib.util.find_spec("gradio")
    path = os.path.join(os.path.dirname(spec.origin), "media_assets", "images", "cheetah.jpg")
    return Image.open(path).convert("RGB")


def official_state(shapes: dict) -> dict[str, torch.Tensor]:
    """The oracle's weights, regenerated from the key names (plus the Swin index buffers)."""
    state = synthetic_official_state(shapes)
    for key, shape in shapes.items():
        if key.endswith("relative_position_index"):
            state[key] = relative_position_index(math.isqrt(shape[0]))
    return state


def load_fixture(folder: str = FIXTURE):
    with open(os.path.join(folder, "meta.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    expected = dict(np.load(os.path.join(folder, "expected.npz")))
    return meta, expected


def build_converted(meta: dict) -> UPNModel:
    state = official_state(meta["official_state_shapes"])
    config = infer_config(state)
    config.image.short_side, config.image.max_size = meta["short_side"], meta["max_size"]
    model = UPNModel(config)
    model.load_state_dict(official_to_ours(state, config), strict=True)
    return model.eval()


@dataclass
class PromptReport:
    enc_logits: float  # max |ours - official| over every encoder token
    logits: float  # over the 900 final logits, same query selection as the official run
    boxes: float  # over the 900 final boxes (normalised cxcywh), same selection
    selection_swaps: int  # queries our own top-k picks that the official top-k does not
    swap_margin: float  # largest |official logit - official k-th logit| among those
    post_boxes: float  # max |trunc(ours) - official int32| over the post-processed boxes
    post_scores: float  # max |ours - official 2-decimal score|
    post_count: tuple  # (ours, official) number of post-processed boxes


def compare(model: UPNModel, meta: dict, expected: dict, image: Image.Image) -> dict[str, PromptReport]:
    pixel_values, _ = preprocess(image, model.config.image)
    assert list(pixel_values.shape[-2:]) == meta["resized_hw"], "resize rule differs from the official one"
    predictor = UPNPredictor(model)
    reports = {}
    with torch.inference_mode():
        state = model.encode(pixel_values[None])
        for p in PROMPTS:
            off_enc = torch.from_numpy(expected[f"{p}_enc_logits"])
            enc = model.encoder_logits(state, p)[0]
            k = expected[f"{p}_logits"].shape[0]
            off_sel = off_enc.topk(k).indices
            same = model.decode(state, p, query_indices=off_sel[None])
            natural = model.decode(state, p)
            nat_sel = enc.topk(k).indices if not model.config.transformer.mask_invalid_proposals else None
            ours_set = set((nat_sel if nat_sel is not None else off_sel).tolist())
            swapped = sorted(ours_set - set(off_sel.tolist()))
            kth = off_enc[off_sel[-1]]
            margin = max((abs(float(off_enc[i] - kth)) for i in swapped), default=0.0)
            if p == "fine":  # end to end through the predictor (preprocess, encode, decode, post-process)
                props = predictor.predict(image, p, min_score=0.3, nms_iou=0.8, max_boxes=100000)
            else:  # same post-processing on the encoder state computed above (saves a backbone pass)
                props = select_proposals(natural.scores[0], natural.boxes[0], [p] * k, image.size, 0.3, 0.8,
                                         100000, clip=model.config.image.clip_boxes)
            off_boxes = torch.from_numpy(expected[f"{p}_post_boxes"]).float()
            off_scores = torch.from_numpy(expected[f"{p}_post_scores"])
            n = min(len(props), off_boxes.shape[0])
            post_boxes = float((props.boxes[:n].trunc() - off_boxes[:n]).abs().max()) if n else 0.0
            post_scores = float((props.scores[:n] - off_scores[:n]).abs().max()) if n else 0.0
            del natural
            reports[p] = PromptReport(
                enc_logits=float((enc - off_enc).abs().max()),
                logits=float((same.logits[0] - torch.from_numpy(expected[f"{p}_logits"])).abs().max()),
                boxes=float((same.boxes[0] - torch.from_numpy(expected[f"{p}_boxes"])).abs().max()),
                selection_swaps=len(swapped), swap_margin=margin, post_boxes=post_boxes,
                post_scores=post_scores, post_count=(len(props), int(off_boxes.shape[0])))
    return reports


def official_key_shapes_match(model: UPNModel, meta: dict) -> bool:
    """Our state dict converted back gives exactly the official key set and shapes."""
    back = ours_to_official(model.state_dict(), model.config)
    return {k: list(v.shape) for k, v in back.items()} == meta["official_state_shapes"]


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    folder = sys.argv[1] if len(sys.argv) > 1 else FIXTURE
    meta, expected = load_fixture(folder)
    model = build_converted(meta)
    print("reverse key set matches:", official_key_shapes_match(model, meta))
    import time

    pixels = preprocess(photo(), model.config.image)[0][None]
    with torch.inference_mode():
        for _ in range(2):  # second run is the timed one (first warms up allocators)
            start = time.perf_counter()
            model.decode(model.encode(pixels), "fine")
            seconds = time.perf_counter() - start
    print(f"ours: one fine forward {seconds:.2f} s; official (from meta): {meta['official_seconds_2_threads']}")
    for name, rep in compare(model, meta, expected, photo()).items():
        print(name, rep)
    print("official thread drift:", json.dumps(meta["thread_drift_2_vs_1"]))
