"""Resolve a synthetic-world referring expression against a record, from its text alone.

Deliberately independent of the generator's own referring/relations code (it parses the text
with regular expressions and applies the relation definitions of docs/synthetic_world.md to
the record's region attributes and boxes), so it can check the generator in tests and score
expressions written by a model (the data engine's quality report).
"""

from __future__ import annotations

import re

COLORS = "red|orange|yellow|green|cyan|blue|purple|pink"
SIZES = "small|medium-sized|large"
PATTERNS = "plain|striped|dotted|checkered"
SUPERS = "leftmost|rightmost|largest|smallest"
CATS = "house|car|tree|person|boat|lamp|circle|square|triangle|star|hexagon"
RELS = "left of|right of|above|below|next to"
PARTS = "wall|roof|door|window|body|wheel|crown|trunk|torso|head|arm|leg|hull|sail|mast|light|pole"

_ATTRS = rf"(?:({SIZES}) )?(?:({PATTERNS}) )?(?:({COLORS}) )?({CATS})"
OBJ_RE = re.compile(rf"the (?:({SUPERS}) )?{_ATTRS}(?: ({RELS}) the {_ATTRS})?")
PART_RE = re.compile(rf"the (?:(left|right) )?({PARTS}) of (the .+)")


def _cx(b):
    return (b[0] + b[2]) / 2


def _cy(b):
    return (b[1] + b[3]) / 2


def _holds(rel, a, b, side):
    if rel == "left of":
        return _cx(a) < b[0]
    if rel == "right of":
        return _cx(a) > b[2]
    if rel == "above":
        return _cy(a) < b[1]
    if rel == "below":
        return _cy(a) > b[3]
    gap = max(0.0, a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3])
    return gap <= 0.04 * side


def _filter(regions, size, pattern, color, cat):
    out = []
    for i, r in enumerate(regions):
        a = r["attributes"]
        if (r["granularity"] == "coarse" and r["category"] == cat and size in (None, a["size"])
                and pattern in (None, a["pattern"]) and color in (None, a["color"])):
            out.append(i)
    return out


class Unparseable(ValueError):
    """The text is not an expression of the synthetic world's grammar."""


def resolve(text: str, rec: dict) -> list[int]:
    """Indices of the record's regions that ``text`` denotes (empty when none or ambiguous).

    Raises :class:`Unparseable` if the text is not in the world's grammar.
    """
    regions, side = rec["regions"], min(rec["width"], rec["height"])
    m = PART_RE.fullmatch(text)
    if m:
        parents = resolve(m.group(3), rec)
        if len(parents) != 1:
            return []
        kids = [i for i, r in enumerate(regions) if r.get("parent") == parents[0] and r["category"] == m.group(2)]
        if m.group(1) is None:
            return kids if len(kids) == 1 else []
        if len(kids) != 2:
            return []
        kids.sort(key=lambda i: _cx(regions[i]["box"]))
        return [kids[0]] if m.group(1) == "left" else [kids[1]]
    m = OBJ_RE.fullmatch(text)
    if not m:
        raise Unparseable(f"unparseable referring expression {text!r}")
    sup, size, pat, col, cat, rel = m.group(1, 2, 3, 4, 5, 6)
    group = _filter(regions, size, pat, col, cat)
    if rel:
        anchors = _filter(regions, *m.group(7, 8, 9, 10))
        if len(anchors) != 1:
            return []
        b = regions[anchors[0]]["box"]
        group = [i for i in group if i != anchors[0] and _holds(rel, regions[i]["box"], b, side)]
    if sup and group:
        def key(i):
            b = regions[i]["box"]
            area = (b[2] - b[0]) * (b[3] - b[1])
            return {"leftmost": -_cx(b), "rightmost": _cx(b), "largest": area, "smallest": -area}[sup]
        best = max(key(i) for i in group)
        group = [i for i in group if key(i) == best]
        group = group if len(group) == 1 else []
    return group
