"""A tiny record set (docs/records.md) with rendered images, and configs for tiny training runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from train.config import load_config

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60)}
SHAPES = ["square", "circle"]


def make_records(root, n: int = 6, seed: int = 0) -> str:
    """Write ``n`` images with 2-3 coloured shapes and a records.jsonl; return its path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        img = Image.new("RGB", (96, 64), (235, 235, 235))
        draw = ImageDraw.Draw(img)
        regions = []
        for j, colour in enumerate(rng.permutation(list(COLOURS))[: 2 + i % 2]):
            shape = SHAPES[(i + j) % 2]
            x1 = 4 + 30 * j
            box = [float(x1), 10.0, float(x1 + 24), 40.0]
            (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
            regions.append({
                "box": box, "granularity": "coarse", "category": shape, "phrase": f"{colour} {shape}",
                "description": f"a {colour} {shape} with smooth edges", "referring": f"the {colour} {shape}", "score": 1.0,
            })
        img.save(root / "images" / f"{i}.png")
        lines.append({
            "image": f"images/{i}.png", "width": 96, "height": 64,
            "caption": " and ".join(r["phrase"] for r in regions),
            "regions": regions,
            "grounded_caption": " and ".join(f"<ground>{r['phrase']}</ground><objects><obj{k}></objects>" for k, r in enumerate(regions)),
            "conversations": [{"from": "human", "value": "how many shapes are there?"}, {"from": "gpt", "value": f"there are {len(regions)}."}],
            "queries": [
                {"type": "phrase", "text": regions[0]["phrase"], "targets": [0]},
                {"type": "phrase", "text": "yellow star", "targets": []},
            ],
            "proposals": [[50.0, 44.0, 70.0, 60.0], [2.0, 2.0, 20.0, 20.0]],
        })
    path = root / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


@pytest.fixture
def records_path(tmp_path):
    return make_records(tmp_path / "data")


def tiny_config(records: str, tokenizer_dir: str, out_dir: str, stage: int = 2, **overrides):
    sets = [
        f"stage={stage}",
        "model.init=chatrex-tiny-random",
        f"model.tokenizer={tokenizer_dir}",
        f"data.train=[{records}]",
        f"train.output_dir={out_dir}",
        "train.batch_size=2",
        "train.max_steps=4",
        "train.save_every=2",
        "train.log_every=1",
        "optim.lr={default: 0.003}",
        "optim.scheduler=constant",
    ]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, sets)
