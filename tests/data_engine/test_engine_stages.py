"""Each data-engine stage on hand-made inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from data_engine.backends.base import GroundedBox
from data_engine.backends.rules import RuleVerifier, singular
from data_engine.config import load_engine_config
from data_engine.pipeline import Pipeline, check_order, grounded_caption
from data_engine.sample import Sample
from data_engine.stages.grounding import GroundingStage, select_boxes
from data_engine.stages.image_filter import DuplicateFilter, ImageFilter
from data_engine.stages.phrases import PhraseStage, extract_phrases, load_spacy
from data_engine.stages.verify_rewrite import VerifyRewriteStage


@pytest.fixture(scope="module")
def nlp():
    return load_spacy()


def texts(nlp, sentence):
    return [p["text"] for p in extract_phrases(nlp, sentence)]


# -- phrases (real spaCy English pipeline) ----------------------------------------------------------
def test_noun_chunks_of_a_real_sentence(nlp):
    assert texts(nlp, "A man in a red shirt rides a brown horse near two dogs.") == ["man", "red shirt", "brown horse", "two dogs"]


def test_abstract_nouns_and_pronouns_are_dropped(nlp):
    assert texts(nlp, "In this photo, a dog sleeps on a sofa in the background.") == ["dog", "sofa"]
    assert texts(nlp, "It looks at them.") == []


def test_phrases_are_deduplicated_and_offsets_point_into_the_caption(nlp):
    caption = "A red car and a red car near the old church."
    phrases = extract_phrases(nlp, caption)
    assert [p["text"] for p in phrases] == ["red car", "old church"]
    for p in phrases:
        assert caption[p["start"]:p["end"]] == p["text"]


def test_phrase_length_rule(nlp):
    long = "A very big old rusty red delivery truck stands here."
    assert texts(nlp, long) == []
    assert extract_phrases(nlp, long, max_words=10)[0]["text"] == "very big old rusty red delivery truck"


def test_phrase_stage_rejects_a_caption_without_objects():
    s = Sample("x", "/nonexistent.png", record={"caption": "It is what it is."})
    PhraseStage().process([s])
    assert s.rejected == "phrases: no object phrases in the caption"


# -- image filter ------------------------------------------------------------------------------------
def noisy(seed, size=(96, 96)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


def sample_for(tmp_path, name, image, **meta):
    path = tmp_path / name
    image.save(path)
    return Sample(name, str(path), meta=meta)


def test_filter_reasons(tmp_path):
    stage = ImageFilter(min_size=64)
    good = sample_for(tmp_path, "good.png", noisy(0))
    small = sample_for(tmp_path, "small.png", noisy(1, (40, 100)))
    plain = sample_for(tmp_path, "plain.png", Image.new("RGB", (200, 200), (120, 130, 140)))
    flagged = sample_for(tmp_path, "flagged.png", noisy(2), nsfw=True)
    again = sample_for(tmp_path, "again.jpg", noisy(0))  # same picture, re-encoded as JPEG
    other = sample_for(tmp_path, "other.png", noisy(3))
    stage.process([good, small, plain, flagged, again, other])
    assert good.rejected is None and other.rejected is None
    assert good.record["width"] == 96 and len(good.scratch["phash"]) == 16
    assert small.rejected == "filter: too small (40x100 < 64 px)"
    assert plain.rejected.startswith("filter: low content")
    assert flagged.rejected == "filter: flagged nsfw in the input metadata"
    assert again.rejected == "filter: duplicate of good.png"


def test_duplicate_filter_is_idempotent_per_id():
    # The runner re-offers images when it retries a failed batch one image at a time.
    dup = DuplicateFilter(max_distance=4)
    assert dup.seen("a", "ffff0000ffff0000") is None
    assert dup.seen("a", "ffff0000ffff0000") is None
    assert dup.seen("b", "ffff0000ffff0001") == "a"
    assert dup.seen("c", "0000ffff0000ffff") is None


def test_filter_rejects_a_smooth_gradient(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))
    s = sample_for(tmp_path, "ramp.png", Image.fromarray(np.stack([ramp] * 3, -1)))
    ImageFilter().process([s])
    assert s.rejected.startswith("filter: low content")


def test_unreadable_image_raises_so_the_runner_records_it(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        ImageFilter().process([Sample("bad", str(bad))])


# -- grounding -----------------------------------------------------------------------------------------
def test_select_boxes_thresholds_nms_and_assignment():
    cands = [
        GroundedBox("dog", (10, 10, 50, 50), 0.9),
        GroundedBox("dog", (12, 10, 50, 52), 0.8),    # NMS duplicate of the first
        GroundedBox("dog", (100, 100, 140, 150), 0.05),  # under the threshold
        GroundedBox("animal", (11, 11, 50, 50), 0.7),  # same object, weaker phrase: assigned to "dog"
        GroundedBox("animal", (60, 60, 90, 90), 0.6),
        GroundedBox("cat", (-20, 0, 30, 300), 0.5),    # clipped to the 200 x 200 image
        GroundedBox("unknown", (0, 0, 5, 5), 0.99),    # not a phrase of this image
    ]
    kept = select_boxes(cands, ["dog", "animal", "cat"], 200, 200, box_threshold=0.1, nms_iou=0.5, max_per_phrase=10, assign_iou=0.7)
    assert kept == [(0, [10.0, 10.0, 50.0, 50.0], 0.9), (1, [60.0, 60.0, 90.0, 90.0], 0.6), (2, [0.0, 0.0, 30.0, 200.0], 0.5)]


class FakeGrounder:
    def __init__(self, answers):
        self.answers = answers

    def ground(self, images, phrases):
        return [[b for p in ps for b in self.answers.get(p, [])] for ps in phrases]

    def provenance(self):
        return {"backend": "fake"}


def phrase_sample(tmp_path, caption, phrases):
    s = sample_for(tmp_path, "scene.png", noisy(5, (200, 200)))
    s.record["caption"] = caption
    s.scratch["phrases"] = [{"text": p, "start": caption.index(p), "end": caption.index(p) + len(p)} for p in phrases]
    return s


def test_grounding_stage_writes_regions_and_rejects_when_nothing_is_found(tmp_path):
    grounder = FakeGrounder({"dog": [GroundedBox("dog", (10, 10, 50, 50), 0.9)]})
    s = phrase_sample(tmp_path, "A dog near a cat.", ["dog", "cat"])
    empty = phrase_sample(tmp_path, "A cat.", ["cat"])
    GroundingStage(grounder).process([s, empty])
    assert s.record["regions"] == [{"box": [10.0, 10.0, 50.0, 50.0], "score": 0.9, "phrase": "dog"}]
    assert s.scratch["region_phrase"] == [0]
    assert empty.rejected == "grounding: no phrase could be grounded"


def test_grounded_caption_marks_phrases_with_their_region_indices():
    caption = "Two dogs chase a red ball."
    phrases = [{"text": "Two dogs", "start": 0, "end": 8}, {"text": "red ball", "start": 17, "end": 25}]
    assert grounded_caption(caption, phrases, [0, 0]) == "<ground>Two dogs</ground><objects><obj0><obj1></objects> chase a red ball."
    assert grounded_caption(caption, phrases, [1, 0]) == (
        "<ground>Two dogs</ground><objects><obj1></objects> chase a <ground>red ball</ground><objects><obj0></objects>.")


# -- verify and rewrite ---------------------------------------------------------------------------------
def test_rule_verifier():
    v = RuleVerifier()
    assert v.consistent([("four boats", "a small cyan boat with a gray sail"), ("red car", "a blue car"), ("red car", "a large red car"),
                         ("two berries", "a ripe berry"), ("dog", "")]) == [True, False, True, True, False]
    assert [singular(w) for w in ("glasses", "houses", "people", "boxes", "wheel")] == ["glass", "house", "person", "box", "wheel"]


class FakeRewriter:
    def referring(self, image, boxes, index, region):
        return {0: "the left dog", 1: "the dog"}[index]

    def provenance(self):
        return {"backend": "fake"}


def test_verify_drops_inconsistent_regions_and_keeps_only_unique_expressions(tmp_path):
    s = phrase_sample(tmp_path, "Two dogs and a cat.", ["Two dogs", "cat"])
    s.record["regions"] = [
        {"box": [10, 10, 50, 50], "phrase": "brown dog", "category": "dog", "description": "a brown dog"},
        {"box": [100, 10, 150, 50], "phrase": "white dog", "category": "dog", "description": "a white dog"},
        {"box": [10, 100, 50, 150], "phrase": "cat", "category": "cat", "description": "a small bird"},
    ]
    s.scratch["region_phrase"] = [0, 0, 1]
    grounder = FakeGrounder({"the left dog": [GroundedBox("the left dog", (11, 10, 50, 50), 0.8)],
                             "the dog": [GroundedBox("the dog", (10, 10, 50, 50), 0.8), GroundedBox("the dog", (100, 10, 150, 50), 0.7)]})
    VerifyRewriteStage(RuleVerifier(), FakeRewriter(), grounder).process([s])
    regions = s.record["regions"]
    assert [r["phrase"] for r in regions] == ["brown dog", "white dog"]  # the cat described as a bird is dropped
    assert regions[0]["referring"] == "the left dog"
    assert "referring" not in regions[1]  # "the dog" also finds the other dog
    assert s.scratch["verify_counts"] == {"regions_rejected": 1, "referring_unique": 1, "referring_not_unique": 1}


# -- configuration and order ----------------------------------------------------------------------------
def test_stage_order_is_checked():
    with pytest.raises(ValueError, match="stage 'grounding' needs \\['phrases'\\]"):
        Pipeline(load_engine_config(None, ["stages=[filter, caption, grounding]"]))
    with pytest.raises(ValueError, match="must come first"):
        load_engine_config(None, ["stages=[caption, filter]"])
    with pytest.raises(ValueError, match="unknown stage 'ocr'"):
        load_engine_config(None, ["stages=[ocr]"])
    with pytest.raises(ValueError, match="backends.verifier.kind"):
        load_engine_config(None, ["backends.verifier.kind=chatrex"])
    with pytest.raises(ValueError, match="unknown key"):
        load_engine_config(None, ["grounding.treshold=0.3"])


def test_stages_without_filter_or_verify_are_a_valid_order():
    stages = Pipeline(load_engine_config(None, ["stages=[caption, phrases, grounding]"])).stages
    assert [s.name for s in stages] == ["caption", "phrases", "grounding"]
    check_order(stages)
    # The same stages out of order are refused, so the check above is not vacuous.
    with pytest.raises(ValueError, match="stage 'grounding' needs"):
        check_order([stages[0], stages[2], stages[1]])


@pytest.mark.parametrize("name", ["engine.yaml", "engine_hf_gpu.yaml"])
def test_shipped_configs_load(name):
    import data_engine

    path = os.path.join(os.path.dirname(data_engine.__file__), "configs", name)
    config = load_engine_config(path)
    assert config.stages[0] == "filter" and config.backends.verifier.kind in ("rules", "hf")


def test_chatrex_backend_turns_counted_plurals_into_trained_queries():
    from data_engine.backends.chatrex_backend import ChatRexBackend

    assert ChatRexBackend.query("four boats") == ("boat", "category")
    assert ChatRexBackend.query("two red cars") == ("red car", "phrase")
    assert ChatRexBackend.query("3 people") == ("person", "category")
    assert ChatRexBackend.query("green circle") == ("green circle", "auto")
