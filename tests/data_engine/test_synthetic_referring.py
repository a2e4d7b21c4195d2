"""Referring expressions are unique in their scene, re-checked by an independent parser.

``data_engine.synthetic.expressions`` does not import the generator's referring/relations code:
it parses the text with its own regular expressions and resolves it against the record's
region attributes and boxes, using the relation definitions documented in
docs/synthetic_world.md.
"""

import functools
import re

import pytest

from data_engine.synthetic import generate_scene
from data_engine.synthetic.expressions import Unparseable, resolve


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


def test_unparseable_text_raises():
    rec = _records()[0]
    with pytest.raises(Unparseable):
        resolve("a lovely purple elephant", rec)
