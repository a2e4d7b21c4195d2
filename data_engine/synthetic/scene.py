"""Scene sampling and layout: which objects, with which attributes, where, and what is visible.

Boxes are absolute pixel xyxy with exclusive far edges (a box ``[0, 0, 1, 1]`` covers the
single top-left pixel). Region boxes are **visible-extent** boxes: the tight box around the
pixels of the object (or part) that remain visible after occlusion. Placement guarantees that
at least ``MIN_VISIBLE`` of every object and of every part stays visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .objects import PartShape, build_parts, rasterize
from .vocabulary import (
    COLORS,
    HELDOUT_PAIRS,
    MAX_OBJECTS,
    MAX_REGIONS,
    OBJECT_ASPECT,
    PATTERNS,
    SHAPES,
    SIZE_RANGES,
    SIZES,
    SPLITS,
)

MIN_VISIBLE = 0.5  # fraction of an object's / part's own area that must stay visible
PLACEMENT_TRIES = 30
_PATTERN_P = (0.4, 0.2, 0.2, 0.2)  # plain, striped, dotted, checkered


@dataclass
class Part:
    """A part of a placed object. ``box`` is its visible-extent pixel xyxy (set by layout)."""

    shape: PartShape
    mask: np.ndarray  # (h, w) bool in the object's local box, before any occlusion
    box: tuple[float, float, float, float] | None = None

    @property
    def name(self) -> str:
        return self.shape.name

    @property
    def color(self) -> str:
        return self.shape.color


@dataclass
class SceneObject:
    """A whole object: attributes, full box position and its parts (painting order)."""

    category: str
    color: str
    size: str
    pattern: str
    x0: int
    y0: int
    w: int
    h: int
    parts: list[Part] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None  # visible extent, set by layout

    @property
    def full_box(self) -> tuple[float, float, float, float]:
        """Full-extent pixel xyxy (ignores occlusion)."""
        return (float(self.x0), float(self.y0), float(self.x0 + self.w), float(self.y0 + self.h))

    @property
    def is_shape(self) -> bool:
        return self.category in SHAPES

    @property
    def region_parts(self) -> list[Part]:
        return [p for p in self.parts if p.shape.is_region]

    @property
    def attributes(self) -> tuple[str, str, str, str]:
        return (self.category, self.color, self.size, self.pattern)


@dataclass
class Background:
    """How to paint the background: ``kind`` is "photo" or "procedural"."""

    kind: str
    photo: str | None = None
    params: dict = field(default_factory=dict)


@dataclass
class Scene:
    width: int
    height: int
    split: str
    background: Background
    objects: list[SceneObject]  # painting order: later objects are on top


def _sample_attributes(rng: np.random.Generator, split: str, n_target: int, forced_heldout: bool):
    size_p = (1 / 3, 1 / 3, 1 / 3) if n_target <= 4 else (0.4, 0.4, 0.2) if n_target <= 9 else (0.55, 0.35, 0.1)
    if forced_heldout:
        pairs = sorted(HELDOUT_PAIRS)
        color, category = pairs[int(rng.integers(len(pairs)))]
    else:
        while True:
            # Whole objects (with parts) are drawn more often than simple shapes.
            if rng.random() < 0.7:
                category = tuple(OBJECT_ASPECT)[int(rng.integers(len(OBJECT_ASPECT)))]
            else:
                category = SHAPES[int(rng.integers(len(SHAPES)))]
            color = tuple(COLORS)[int(rng.integers(len(COLORS)))]
            if split == "heldout" or (color, category) not in HELDOUT_PAIRS:
                break
    size = SIZES[int(rng.choice(3, p=size_p))]
    pattern = PATTERNS[int(rng.choice(4, p=_PATTERN_P))]
    return category, color, size, pattern


def _object_dims(category: str, size: str, rng: np.random.Generator, side: int) -> tuple[int, int]:
    lo, hi = SIZE_RANGES[size]
    longer = rng.uniform(lo, hi) * side
    aspect = OBJECT_ASPECT.get(category, 1.0)
    if aspect >= 1.0:
        return int(round(longer)), max(1, int(round(longer / aspect)))
    return max(1, int(round(longer * aspect))), int(round(longer))


def sample_scene(split: str, rng: np.random.Generator, width: int, height: int,
                 background: Background) -> Scene:
    """Sample objects and place them without hiding more than half of anything.

    Objects are placed one by one on top of the previous ones. A candidate position is
    rejected if it would leave less than ``MIN_VISIBLE`` of any earlier object or part
    visible; after ``PLACEMENT_TRIES`` failures the object is dropped. Every (category,
    colour, size, pattern) tuple occurs at most once per scene, so the full attribute phrase
    always refers to exactly one object.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    side = min(width, height)
    min_px = max(2.0, 6.0 * side / 512)
    n_target = int(rng.integers(1, MAX_OBJECTS + 1))
    idmap = np.zeros((height, width), dtype=np.int32)  # 0 = background, else global part id + 1
    visible: list[int] = [0]  # visible pixel count per global part id + 1 (index 0 unused)
    own_area: list[int] = [0]  # part area not covered by its own object's later parts
    owner: list[int] = [0]  # object index of each global part id + 1
    id_range: list[tuple[int, int]] = []  # per object: its global part ids + 1, [start, end)
    obj_area: list[int] = []  # per object: pixels of its full silhouette
    objects: list[SceneObject] = []
    seen: set[tuple[str, str, str, str]] = set()
    n_regions = 0
    for i in range(n_target):
        attrs = _sample_attributes(rng, split, n_target, forced_heldout=(split == "heldout" and i == 0))
        if attrs in seen:
            continue
        category, color, size, pattern = attrs
        w, h = _object_dims(category, size, rng, side)
        if w >= width or h >= height:
            continue
        shapes = build_parts(category, w, h, color, pattern, rng, min_px)
        masks = [rasterize(s, w, h) for s in shapes]
        local = np.zeros((h, w), dtype=np.int32)
        for k, m in enumerate(masks):
            local[m] = k + 1
        self_area = np.bincount(local.ravel(), minlength=len(masks) + 1)[1:]
        if (self_area == 0).any():
            continue  # image too small for this object: a part vanished
        new_regions = 1 + sum(s.is_region for s in shapes)
        if n_regions + new_regions > MAX_REGIONS:
            continue
        union = local > 0
        placed = None
        vis = np.asarray(visible, dtype=np.int64)
        own = np.asarray(own_area, dtype=np.int64)
        for _ in range(PLACEMENT_TRIES):
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            covered = idmap[y0:y0 + h, x0:x0 + w][union]
            lost = np.bincount(covered, minlength=len(visible))
            lost[0] = 0
            after = vis - lost
            if not np.all(after[1:] >= MIN_VISIBLE * own[1:]):
                continue
            # Whole objects too: an object's visible pixels are the sum over its parts.
            hit = {owner[g] for g in np.nonzero(lost)[0]}
            if all(after[id_range[j][0]:id_range[j][1]].sum() >= MIN_VISIBLE * obj_area[j] for j in hit):
                placed = (x0, y0, lost)
                break
        if placed is None:
            continue
        x0, y0, lost = placed
        base = len(visible)
        window = idmap[y0:y0 + h, x0:x0 + w]
        window[union] = local[union] + (base - 1)
        for g in range(1, base):
            visible[g] -= int(lost[g])
        visible.extend(int(a) for a in self_area)
        own_area.extend(int(a) for a in self_area)
        owner.extend([len(objects)] * len(shapes))
        id_range.append((base, base + len(shapes)))
        obj_area.append(int(self_area.sum()))
        obj = SceneObject(category, color, size, pattern, x0, y0, w, h,
                          parts=[Part(s, m) for s, m in zip(shapes, masks)])
        objects.append(obj)
        seen.add(attrs)
        n_regions += new_regions
    _set_visible_boxes(objects, idmap)
    return Scene(width, height, split, background, objects)


def _mask_box(mask: np.ndarray, x0: int, y0: int) -> tuple[float, float, float, float] | None:
    rows = np.nonzero(mask.any(axis=1))[0]
    if rows.size == 0:
        return None
    cols = np.nonzero(mask.any(axis=0))[0]
    return (float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1))


def _set_visible_boxes(objects: list[SceneObject], idmap: np.ndarray) -> None:
    base = 1
    for obj in objects:
        window = idmap[obj.y0:obj.y0 + obj.h, obj.x0:obj.x0 + obj.w]
        ids = range(base, base + len(obj.parts))
        for g, part in zip(ids, obj.parts):
            part.box = _mask_box(window == g, obj.x0, obj.y0)
            assert part.box is not None, "placement keeps every part at least half visible"
        obj.box = _mask_box((window >= base) & (window < base + len(obj.parts)), obj.x0, obj.y0)
        base += len(obj.parts)
