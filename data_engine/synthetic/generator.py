"""Public API: one scene -> (image, record), and a whole split -> PNGs + records.jsonl.

Records follow docs/records.md (see ``data_engine.schema``); boxes are absolute pixel xyxy
floats of the visible extent (exclusive far edges). Region order: each whole object
(granularity "coarse") is followed by its parts ("fine", with ``parent`` = the object's index).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from chatrex.utils.atomic import atomic_path, atomic_write

from .backgrounds import sample_background
from .language import (
    RegionIndex,
    caption,
    conversations,
    object_description,
    object_phrase,
    part_description,
    part_phrase,
    queries,
)
from .referring import candidate_refs, choose_ref, landmark_ref, part_positions, part_ref_text
from .render import render_scene
from .scene import Scene, sample_scene
from .vocabulary import GENERATOR_VERSION, SPLIT_CODES, SPLITS

MIN_SIZE = 64


def _check_args(split: str, seed: int, index: int, size: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    for name, value in (("seed", seed), ("index", index)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")


def scene_rng(split: str, seed: int, index: int) -> np.random.Generator:
    """The image's private RNG: a pure function of (split, seed, index), no global state."""
    return np.random.default_rng(np.random.SeedSequence([SPLIT_CODES[split], int(seed), int(index)]))


def image_name(split: str, seed: int, index: int) -> str:
    return f"images/{split}_s{seed}_{index:07d}.png"


def build_record(scene: Scene, rng: np.random.Generator, image: str, record_id: str) -> dict:
    """The docs/records.md record of a laid-out scene (uses ``rng`` for language choices)."""
    side = min(scene.width, scene.height)
    objs = scene.objects
    landmarks = [landmark_ref(k, objs) for k in range(len(objs))]
    cands = [candidate_refs(i, objs, side, landmarks) for i in range(len(objs))]
    refs = [choose_ref(c, rng) for c in cands]
    color_refs = [choose_ref(c, rng, avoid_color=True) for c in cands]

    regions: list[dict] = []
    idx = RegionIndex(objects=[], parts=[])
    for i, obj in enumerate(objs):
        parent = len(regions)
        idx.objects.append(parent)
        regions.append({
            "box": list(obj.box), "granularity": "coarse", "category": obj.category,
            "phrase": object_phrase(obj), "description": object_description(obj),
            "referring": refs[i].text(), "score": 1.0,
            "attributes": {"color": obj.color, "size": obj.size, "pattern": obj.pattern},
        })
        part_idx = []
        for k, (part, pos) in enumerate(zip(obj.region_parts, part_positions(obj))):
            part_idx.append(len(regions))
            regions.append({
                "box": list(part.box), "granularity": "fine", "category": part.name,
                "phrase": part_phrase(obj, k), "description": part_description(obj, k, pos),
                "referring": part_ref_text(part.name, pos, refs[i]), "score": 1.0,
                "parent": parent,
                # Parts have no size class of their own; only the main part carries a pattern.
                "attributes": {"color": part.color, "size": None, "pattern": part.shape.pattern},
            })
        idx.parts.append(part_idx)

    plain, grounded = caption(scene, idx, rng)
    return {
        "id": record_id,
        "image": image,
        "width": scene.width,
        "height": scene.height,
        "caption": plain,
        "grounded_caption": grounded,
        "regions": regions,
        "conversations": conversations(scene, idx, refs, color_refs, rng),
        "queries": queries(scene, idx, regions, rng),
        "split": scene.split,
        "background": {"kind": scene.background.kind, "photo": scene.background.photo},
        "provenance": {"backend": "synthetic", "generator_version": GENERATOR_VERSION},
    }


def generate_scene(split: str, seed: int, index: int, size: int = 512) -> tuple[Image.Image, dict]:
    """Render image ``index`` of ``(split, seed)`` at ``size`` x ``size`` pixels.

    Returns the RGB image and its record; ``record["image"]`` is the path the image gets
    inside an output directory (``images/<split>_s<seed>_<index>.png``). Deterministic:
    the same arguments give byte-identical images and identical records.
    """
    _check_args(split, seed, index, size)
    rng = scene_rng(split, seed, index)
    background = sample_background(rng)
    scene = sample_scene(split, rng, size, size, background)
    image = render_scene(scene)
    record_id = f"synthetic-{split}-s{seed}-{index:07d}-px{size}"
    return image, build_record(scene, rng, image_name(split, seed, index), record_id)


def _render_one(args: tuple[str, str, int, int, int]) -> str:
    out_dir, split, seed, index, size = args
    image, record = generate_scene(split, seed, index, size)
    path = Path(out_dir) / record["image"]
    # Write then rename, so an interrupted run never leaves a truncated PNG behind.
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def write_split(out_dir: str | os.PathLike, split: str, n: int, seed: int, size: int = 512,
                workers: int = 0, progress: bool = False) -> Path:
    """Write ``n`` images to ``out_dir/images/`` and their records to ``out_dir/records.jsonl``.

    Image paths inside records are relative to ``out_dir``. ``records.jsonl`` is written to a
    temporary file and renamed at the end, so an interrupted run leaves either the old file or
    none, never half a file. ``workers`` > 1 renders in that many processes (same bytes).
    Returns the path of ``records.jsonl``.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    _check_args(split, seed, 0, size)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), split, int(seed), i, int(size)) for i in range(n)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"synthetic {split}", unit="img")
    final = out / "records.jsonl"
    try:
        with atomic_write(final, encoding="utf-8") as f:
            if workers > 1:
                import multiprocessing as mp

                with mp.get_context("spawn").Pool(workers) as pool:
                    # imap keeps input order, so records.jsonl does not depend on timing.
                    for line in pool.imap(_render_one, jobs, chunksize=8):
                        f.write(line + "\n")
                        if bar is not None:
                            bar.update(1)
            else:
                for job in jobs:
                    f.write(_render_one(job) + "\n")
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return final
