"""Referring expressions: a tiny grammar, its resolver and a generator that proves uniqueness.

Grammar (every expression the generator writes parses with it)::

    REF      := "the" [SUPER] [SIZE] [PATTERN] [COLOR] CATEGORY [RELATION LANDMARK]
    LANDMARK := "the" [SIZE] [PATTERN] [COLOR] CATEGORY
    PARTREF  := "the" ["left" | "right"] PART "of" REF

A superlative applies to the objects matching the attributes ("the leftmost red car" is the
leftmost of the red cars); a relation filters them ("the red car left of the blue house").
Relations and superlatives are defined in ``relations.py`` on visible-extent boxes.
``left``/``right`` on parts are image directions (a person's "left arm" is the one on the
left of the image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .relations import RELATIONS, SUPERLATIVES, relation_score, superlative_clear, superlative_key
from .scene import SceneObject

# Attribute subsets in the order tried (shortest first); the last one always identifies an
# object because scene sampling keeps full attribute tuples unique.
ATTR_SUBSETS: tuple[tuple[str, ...], ...] = (
    (), ("color",), ("size",), ("pattern",), ("size", "color"), ("pattern", "color"),
    ("size", "pattern"), ("size", "pattern", "color"),
)
_KIND_WEIGHTS = {"attribute": 0.4, "superlative": 0.25, "relation": 0.35}
MARGIN = 0.02  # fraction of the image side by which relations must clearly hold / fail


@dataclass(frozen=True)
class Ref:
    """A structured referring expression for a whole object."""

    category: str
    color: str | None = None
    size: str | None = None
    pattern: str | None = None
    superlative: str | None = None
    relation: str | None = None
    landmark: "Ref | None" = None

    def noun_phrase(self) -> str:
        """The expression without the leading "the"."""
        words = [w for w in (self.superlative, self.size, self.pattern, self.color) if w]
        words.append(self.category)
        if self.relation:
            assert self.landmark is not None, "a relation needs a landmark"
            words += [self.relation, self.landmark.text()]
        return " ".join(words)

    def text(self) -> str:
        return "the " + self.noun_phrase()

    def uses_color(self) -> bool:
        return self.color is not None


def _matches(obj: SceneObject, ref: Ref) -> bool:
    return (obj.category == ref.category
            and (ref.color is None or obj.color == ref.color)
            and (ref.size is None or obj.size == ref.size)
            and (ref.pattern is None or obj.pattern == ref.pattern))


def resolve(ref: Ref, objects: list[SceneObject], side: float) -> list[int]:
    """Indices of the objects the expression denotes, with exact (sign-only) semantics."""
    group = [i for i, o in enumerate(objects) if _matches(o, ref)]
    if ref.relation:
        anchors = resolve(ref.landmark, objects, side)
        if len(anchors) != 1:
            return []
        a = objects[anchors[0]].box
        group = [i for i in group if i != anchors[0] and relation_score(ref.relation, objects[i].box, a, side) > 0]
    if ref.superlative and group:
        keys = [superlative_key(ref.superlative, objects[i].box) for i in group]
        best = max(keys)
        winners = [i for i, k in zip(group, keys) if k == best]
        group = winners if len(winners) == 1 else []
    return group


def _attr_ref(obj: SceneObject, subset: tuple[str, ...], **extra) -> Ref:
    return Ref(obj.category, **{k: getattr(obj, k) for k in subset}, **extra)


def landmark_ref(i: int, objects: list[SceneObject]) -> Ref:
    """Shortest attribute-only expression that denotes exactly object ``i``."""
    for subset in ATTR_SUBSETS:
        ref = _attr_ref(objects[i], subset)
        if [j for j, o in enumerate(objects) if _matches(o, ref)] == [i]:
            return ref
    raise AssertionError("full attribute tuples are unique per scene")


def candidate_refs(i: int, objects: list[SceneObject], side: float,
                   landmarks: list[Ref] | None = None) -> dict[str, list[Ref]]:
    """All unambiguous expressions for object ``i``, by kind (attribute/superlative/relation).

    Each one is checked with ``resolve`` before it is returned. ``landmarks`` (optional cache):
    ``landmark_ref(k, objects)`` for every k.
    """
    if landmarks is None:
        landmarks = [landmark_ref(k, objects) for k in range(len(objects))]
    target = objects[i]
    margin = MARGIN * side
    out: dict[str, list[Ref]] = {"attribute": [], "superlative": [], "relation": []}
    for subset in ATTR_SUBSETS:
        ref = _attr_ref(target, subset)
        if [j for j, o in enumerate(objects) if _matches(o, ref)] == [i]:
            out["attribute"].append(ref)
    for subset in ((), ("color",)):
        base = _attr_ref(target, subset)
        group = [j for j, o in enumerate(objects) if _matches(o, base)]
        others = [objects[j].box for j in group if j != i]
        for sup in SUPERLATIVES:
            if others and superlative_clear(sup, target.box, others, side):
                out["superlative"].append(_attr_ref(target, subset, superlative=sup))
        for k, land in enumerate(objects):
            if k == i:
                continue
            lref = landmarks[k]
            for rel in RELATIONS:
                if relation_score(rel, target.box, land.box, side) < margin:
                    continue
                if all(relation_score(rel, objects[j].box, land.box, side) <= -margin
                       for j in group if j not in (i, k)):
                    out["relation"].append(_attr_ref(target, subset, relation=rel, landmark=lref))
    for kind, refs in out.items():
        for ref in refs:
            assert resolve(ref, objects, side) == [i], (kind, ref.text())
    return out


def choose_ref(cands: dict[str, list[Ref]], rng: np.random.Generator, avoid_color: bool = False) -> Ref | None:
    """Pick one expression: a random kind, then one of the three shortest of that kind.

    ``avoid_color``: only expressions whose target part does not name the colour (for
    "what colour is ..." questions); None if there is none.
    """
    pools = {k: [r for r in v if not (avoid_color and r.uses_color())] for k, v in cands.items()}
    kinds = [k for k in _KIND_WEIGHTS if pools[k]]
    if not kinds:
        return None
    w = np.array([_KIND_WEIGHTS[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    pool = sorted(pools[kind], key=lambda r: (len(r.text()), r.text()))[:3]
    return pool[int(rng.integers(len(pool)))]


def part_positions(obj: SceneObject) -> list[str | None]:
    """Per region part of ``obj``: "left"/"right" when the object has two parts of that name
    (ordered by visible-box centre x), else None."""
    parts = obj.region_parts
    out: list[str | None] = [None] * len(parts)
    by_name: dict[str, list[int]] = {}
    for k, p in enumerate(parts):
        by_name.setdefault(p.name, []).append(k)
    for ks in by_name.values():
        if len(ks) == 1:
            continue
        assert len(ks) == 2, "at most two parts of one name per object"
        ks = sorted(ks, key=lambda k: ((parts[k].box[0] + parts[k].box[2]) / 2, k))
        out[ks[0]], out[ks[1]] = "left", "right"
    return out


def part_ref_text(part_name: str, position: str | None, parent: Ref) -> str:
    pos = f"{position} " if position else ""
    return f"the {pos}{part_name} of {parent.text()}"
