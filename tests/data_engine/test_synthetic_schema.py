"""The general record validator (data_engine.schema) names the offending field."""

import copy

import pytest

from data_engine.schema import validate_record
from data_engine.synthetic import generate_scene

GOOD = {
    "image": "a.jpg", "width": 100, "height": 80, "caption": "A red car.",
    "regions": [
        {"box": [1, 2, 50, 40], "granularity": "coarse", "category": "car", "phrase": "red car",
         "description": "a red car", "referring": "the red car", "score": 0.9},
        {"box": [5, 30, 15, 40], "granularity": "fine", "category": "wheel", "parent": 0,
         "attributes": {"color": "black", "size": None}},
    ],
    "grounded_caption": "A <ground>red car</ground><objects><obj0></objects>.",
    "conversations": [{"from": "human", "value": "Where is the car?"},
                      {"from": "gpt", "value": "<ground>here</ground><objects><obj0></objects>"}],
    "queries": [{"type": "phrase", "text": "red car", "targets": [0]},
                {"type": "category", "text": "boat", "targets": []}],
    "provenance": {"backend": "synthetic"},
}


def test_minimal_and_full_records_pass():
    validate_record({"image": "x.png"})
    validate_record(GOOD)
    validate_record(generate_scene("val", 0, 0, size=128)[1])


@pytest.mark.parametrize("path, value, field", [
    (("image",), None, "image"),
    (("width",), 0, "width"),
    (("regions", 0, "box"), [10, 0, 5, 5], "regions[0].box"),
    (("regions", 0, "box"), [0, 0, 500, 5], "regions[0].box"),
    (("regions", 0, "box"), [0, 0, 5], "regions[0].box"),
    (("regions", 0, "box"), [4, 2, 4, 9], "regions[0].box: degenerate"),  # no area, as the importers refuse
    (("regions", 0, "box"), [0, 0, float("nan"), 5], "regions[0].box"),
    (("regions", 0, "granularity"), "medium", "regions[0].granularity"),
    (("regions", 0, "score"), 1.5, "regions[0].score"),
    (("regions", 1, "parent"), 7, "regions[1].parent"),
    (("regions", 0, "phrase"), "", "regions[0].phrase"),
    (("grounded_caption",), "A <ground>car</ground><objects><obj9></objects>", "grounded_caption"),
    (("grounded_caption",), "A <ground>car</ground>", "grounded_caption"),
    (("conversations", 0, "from"), "robot", "conversations[0].from"),
    (("queries", 0, "type"), "box", "queries[0].type"),
    (("queries", 0, "targets"), [3], "queries[0].targets"),
    (("provenance",), "x", "provenance"),
])
def test_bad_field_is_named(path, value, field):
    rec = copy.deepcopy(GOOD)
    target = rec
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    with pytest.raises(ValueError, match=r"^" + field.replace("[", r"\[").replace("]", r"\]")):
        validate_record(rec)
