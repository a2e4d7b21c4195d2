"""Spatial relations and superlatives between objects, defined on visible-extent boxes.

Every relation has a signed score in pixels: > 0 means it holds. The language module only
uses a relation when the target satisfies it *clearly* (score >= margin) and every distractor
*clearly* fails it (score <= -margin), so expressions are unambiguous to a viewer too; a
checker that just tests the sign (as the tests do) gets the same answer.

Definitions (boxes are pixel xyxy, ``cx``/``cy`` the box centre):

- ``a left of b``:  cx(a) < x1(b)      (a's centre is left of all of b)
- ``a right of b``: cx(a) > x2(b)
- ``a above b``:    cy(a) < y1(b)
- ``a below b``:    cy(a) > y2(b)
- ``a next to b``:  the gap between the two boxes is at most ``NEXT_TO_GAP`` x image side
- ``leftmost`` / ``rightmost``: smallest / largest cx in the group
- ``largest`` / ``smallest``: largest / smallest box area in the group
"""

from __future__ import annotations

Box = tuple[float, float, float, float]

RELATIONS = ("left of", "right of", "above", "below", "next to")
SUPERLATIVES = ("leftmost", "rightmost", "largest", "smallest")
NEXT_TO_GAP = 0.04


def center(b: Box) -> tuple[float, float]:
    return ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)


def area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def gap(a: Box, b: Box) -> float:
    """Chebyshev distance between two boxes (0 when they touch or overlap)."""
    dx = max(0.0, max(a[0] - b[2], b[0] - a[2]))
    dy = max(0.0, max(a[1] - b[3], b[1] - a[3]))
    return max(dx, dy)


def relation_score(rel: str, a: Box, b: Box, side: float) -> float:
    """Signed pixel score of "a <rel> b" (> 0: holds)."""
    cx, cy = center(a)
    if rel == "left of":
        return b[0] - cx
    if rel == "right of":
        return cx - b[2]
    if rel == "above":
        return b[1] - cy
    if rel == "below":
        return cy - b[3]
    if rel == "next to":
        return NEXT_TO_GAP * side - gap(a, b)
    raise ValueError(f"unknown relation {rel!r}")


def superlative_key(sup: str, b: Box) -> float:
    """Value that the superlative maximises."""
    if sup == "leftmost":
        return -center(b)[0]
    if sup == "rightmost":
        return center(b)[0]
    if sup == "largest":
        return area(b)
    if sup == "smallest":
        return -area(b)
    raise ValueError(f"unknown superlative {sup!r}")


def superlative_clear(sup: str, target: Box, others: list[Box], side: float) -> bool:
    """True if ``target`` wins ``sup`` over all ``others`` by a visible margin."""
    if not others:
        return False
    t = superlative_key(sup, target)
    best_other = max(superlative_key(sup, o) for o in others)
    if sup in ("largest", "smallest"):
        # Areas: the winner must be at least 1.5x larger (or smaller) than the runner-up.
        t, best_other = abs(t), abs(best_other)
        return t >= 1.5 * best_other if sup == "largest" else 1.5 * t <= best_other
    return t - best_other >= 0.03 * side
