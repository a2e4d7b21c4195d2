"""The heldout split's (colour, category) pairs never occur in train/val/test, even as text."""

import json
import re

import pytest

from data_engine.synthetic import HELDOUT_PAIRS, generate_scene
from data_engine.synthetic.vocabulary import plural

_HELD_RE = re.compile(r"\b(" + "|".join(f"{c} (?:{k}|{plural(k)})" for c, k in HELDOUT_PAIRS) + r")\b")


def _pairs(rec):
    return {(r["attributes"]["color"], r["category"]) for r in rec["regions"] if r["granularity"] == "coarse"}


def test_train_never_produces_or_names_heldout_pairs():
    for i in range(200):
        _, rec = generate_scene("train", 0, i, size=96)
        assert not (_pairs(rec) & HELDOUT_PAIRS), rec["id"]
        text = json.dumps({k: rec[k] for k in ("caption", "regions", "conversations", "queries")})
        assert not _HELD_RE.search(text), (rec["id"], _HELD_RE.search(text).group(0))


@pytest.mark.parametrize("split", ["val", "test"])
def test_val_and_test_exclude_heldout_pairs(split):
    for i in range(40):
        _, rec = generate_scene(split, 9, i, size=96)
        assert not (_pairs(rec) & HELDOUT_PAIRS)


def test_every_heldout_image_has_a_heldout_object():
    seen = set()
    for i in range(40):
        _, rec = generate_scene("heldout", 2, i, size=96)
        held = _pairs(rec) & HELDOUT_PAIRS
        assert held, rec["id"]
        seen |= held
    assert len(seen) >= len(HELDOUT_PAIRS) // 2


def test_bad_split_and_arguments_are_rejected():
    with pytest.raises(ValueError, match="split"):
        generate_scene("dev", 0, 0)
    with pytest.raises(ValueError, match="seed"):
        generate_scene("train", -1, 0)
    with pytest.raises(ValueError, match="size"):
        generate_scene("train", 0, 0, size=10)
