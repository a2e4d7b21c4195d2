"""The key-renaming engine (chatrex.convert.rules) and the one bad-key report (KeyReport)."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

from chatrex.convert.rules import KeyRules
from chatrex.utils.strict_loading import KeyReport

TABLE = [
    ("blocks.{b}.gamma", "layers.{b}.scale"),
    ("blocks.{b}.fc{n}.{p}", "layers.{b}.linear{n}.{p}"),
    ("vision.special.", "special."),
    ("vision.", ""),
]
RULES = KeyRules(TABLE, placeholders={"p": "weight|bias"})


def test_whole_key_rules_with_placeholders():
    assert RULES.apply("blocks.3.gamma") == "layers.3.scale"
    assert RULES.apply("blocks.12.fc2.bias") == "layers.12.linear2.bias"
    # The whole key must match: no trailing rest, and each placeholder only takes its regex.
    assert RULES.apply("blocks.3.gamma.extra") is None
    assert RULES.apply("blocks.x.gamma") is None
    assert RULES.apply("blocks.1.fc1.scale") is None


def test_prefix_rules_keep_the_rest_and_the_first_match_wins():
    assert RULES.apply("vision.encoder.layers.0.weight") == "encoder.layers.0.weight"
    assert RULES.apply("vision.special.a.b") == "special.a.b"  # before the general "vision." rule
    flipped = KeyRules(TABLE[::-1], placeholders={"p": "weight|bias"})
    assert flipped.apply("vision.special.a.b") == "special.a.b"  # "vision." takes it first now
    assert flipped.inverse("special.a.b") == "vision.special.a.b"  # the "" prefix takes every key
    assert RULES.apply("vision.") is None  # a prefix rule keeps a non-empty rest


def test_inverse_round_trip():
    keys = ["blocks.0.gamma", "blocks.7.fc1.weight", "vision.special.x", "vision.y.z"]
    forward, unmatched = RULES.rename(keys)
    assert not unmatched
    backward, unmatched = RULES.rename(forward.values(), inverse=True)
    assert not unmatched and [backward[forward[k]] for k in keys] == keys


def test_unmatched_keys_are_returned_in_order():
    renamed, unmatched = RULES.rename(["zeta", "blocks.1.gamma", "alpha"])
    assert renamed == {"blocks.1.gamma": "layers.1.scale"} and unmatched == ["zeta", "alpha"]
    no_catch_all = KeyRules(TABLE[:3], placeholders={"p": "weight|bias"})  # without the "" target that takes any key back
    assert no_catch_all.inverse("blocks.1.gamma") is None and no_catch_all.inverse("layers.1.scale") == "blocks.1.gamma"


def test_a_repeated_placeholder_must_take_one_value():
    rules = KeyRules([("a.{i}.b.{i}", "c.{i}")])
    assert rules.apply("a.2.b.2") == "c.2" and rules.apply("a.2.b.3") is None


@pytest.mark.parametrize("pair, word", [
    (("a.", "b"), "prefixes"),
    (("a.{i}", "b"), r"\['i'\] != \[\]"),
    (("a.{_rest}", "b.{_rest}"), "reserved"),
])
def test_a_bad_rule_is_refused_naming_it(pair, word):
    with pytest.raises(ValueError, match=word) as err:
        KeyRules([pair])
    assert repr(pair[0]) in str(err.value)


def test_the_report_words_every_kind_the_same_way():
    report = KeyReport("CLIP checkpoint", unmapped=["z", "y"], missing=["m"], unexpected=["u"],
                       wrong_shape=["w (2,) != (3,)"], problems=["no clip weights found"])
    with pytest.raises(ValueError) as err:
        report.raise_if_any()
    assert str(err.value) == ("CLIP checkpoint: unmapped 2 key(s): y, z; missing 1 key(s): m; unexpected 1 key(s): u; "
                              "wrong shape 1 key(s): w (2,) != (3,); no clip weights found")


def test_the_report_lists_the_first_20_keys_sorted():
    keys = [f"k{i:02d}" for i in range(25)][::-1]
    with pytest.raises(ValueError) as err:
        KeyReport("x", missing=keys).raise_if_any()
    assert str(err.value) == "x: missing 25 key(s): " + ", ".join(f"k{i:02d}" for i in range(20)) + " ..."


def test_a_clean_report_does_not_raise():
    KeyReport("x").raise_if_any()
    shape = SimpleNamespace(shape=(2, 3))
    KeyReport.against("x", {"a": shape}, {"a": shape}).raise_if_any()


def test_against_compares_keys_and_shapes():
    got = {"a": SimpleNamespace(shape=(2,)), "b": SimpleNamespace(shape=(1,))}
    want = {"a": SimpleNamespace(shape=(3,)), "c": SimpleNamespace(shape=(1,))}
    report = KeyReport.against("x", got, want, unmapped=["q"])
    assert (report.unmapped, report.missing, report.unexpected, report.wrong_shape) == (["q"], ["c"], ["b"], ["a (2,) != (3,)"])


def test_engine_and_report_import_no_torch():
    code = "import chatrex.convert.rules, chatrex.utils.strict_loading, sys; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
