"""Referring expressions are unique in their scene, re-checked by an independent parser.

The checker below does not import the generator's referring/relations code: it parses the
text with its own regular expressions and resolves it against the record's region
attributes and boxes, using the relation definitions documented in docs/synthetic_world.md.
"""

import functools
import re

from data_engine.synthetic import generate_scene

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


def resolve(text, rec):
    """Region indices the text denotes; raises AssertionError if it does not parse."""
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
        assert _cx(regions[kids[0]]["box"]) < _cx(regions[kids[1]]["box"])
        return [kids[0]] if m.group(1) == "left" else [kids[1]]
    m = OBJ_RE.fullmatch(text)
    assert m, f"unparseable referring expression {text!r}"
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


@functools.lru_cache(maxsize=None)
def _records():
    out = []
    for split in ("train", "heldout"):
        out += [generate_scene(split, 5, i, size=256)[1] for i in range(25)]
    return out


def test_every_region_referring_is_unique_and_correct():
    kinds = set()
    for rec in _records():
        for i, r in enumerate(rec["regions"]):
            assert resolve(r["referring"], rec) == [i], (rec["id"], r["referring"])
            words = r["referring"].split()
            kinds |= {w for w in words if w in ("left", "right", "above", "below", "next",
                                                "leftmost", "rightmost", "largest", "smallest")}
    # The generator uses relations and superlatives, not only attributes.
    assert {"left", "right", "above", "below", "leftmost", "rightmost"} & kinds
    assert len(kinds) >= 5, kinds


def test_referring_queries_resolve_to_their_targets_including_negatives():
    negatives = 0
    for rec in _records():
        for q in rec["queries"]:
            if q["type"] == "referring":
                assert resolve(q["text"], rec) == q["targets"], (rec["id"], q)
                negatives += not q["targets"]
    assert negatives >= len(_records()) // 2


def test_question_expressions_resolve_to_the_grounded_answer():
    for rec in _records():
        conv = rec["conversations"]
        for q, a in zip(conv[::2], conv[1::2]):
            m = re.fullmatch(r"(?:What colour is|Where is) (the .+)\?", q["value"])
            if not m:
                continue
            target = [int(x) for x in re.findall(r"<obj(\d+)>", a["value"].split("</objects>")[0])]
            assert resolve(m.group(1), rec) == target, (rec["id"], q, a)
            if q["value"].startswith("What colour"):
                assert a["value"].endswith(f"is {rec['regions'][target[0]]['attributes']['color']}.")
