"""train.diagnostics: error causes are assigned as documented, probes read what is there and
only that, and oracle features state a box's true attributes in the cached-training layout."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from chatrex.utils.jsonl import JsonlRecords
from train.diagnostics.error_causes import (
    detection_counts,
    instance_bin,
    named_attributes,
    referring_cause,
    referring_form,
    referring_table,
)
from train.diagnostics.feature_probes import probe
from train.diagnostics.oracle_features import OracleFeatureCache, OracleFeatures
from train.feature_cache import FeatureCache, build_cache, candidate_boxes
from train.model_loading import load_model_and_processor

from .conftest import make_records, tiny_config


def region(box, category, color=None, pattern=None, size=None, granularity="coarse"):
    return {"box": box, "category": category, "granularity": granularity, "attributes": {"color": color, "pattern": pattern, "size": size}}


@pytest.mark.parametrize("text, form", [
    ("the boat", "category"), ("the dotted cyan triangle", "attribute"), ("the rightmost house", "ordinal"),
    ("the star above the red lamp", "relation"), ("the left wheel of the dotted car", "part"), ("the hull of the boat", "part"),
])
def test_referring_form(text, form):
    assert referring_form(text) == form


def test_named_attributes_ignore_the_related_object():
    assert named_attributes("the large striped red car left of the blue house") == {"color": "red", "pattern": "striped", "size": "large"}
    assert named_attributes("the sky blue window") == {"color": "sky blue"}
    assert named_attributes("the star above the red lamp") == {}


REGIONS = [
    region([0, 0, 10, 10], "car", "red", "striped", "large"),     # 0: target
    region([20, 0, 30, 10], "car", "red", "dotted", "large"),     # 1: differs in pattern
    region([40, 0, 50, 10], "car", "blue", "striped", "large"),   # 2: differs in colour
    region([60, 0, 70, 10], "boat", "red", "striped", "large"),   # 3: another object
    region([0, 0, 4, 4], "wheel", "black", granularity="fine"),   # 4: a part
]
BOX_LIST = [r["box"] for r in REGIONS] + [[80, 80, 90, 90]]


@pytest.mark.parametrize("text, pred, cause", [
    ("the striped red car", [[0, 0, 10, 10]], None),
    ("the striped red car", [[20, 0, 30, 10]], "wrong attribute (pattern)"),
    ("the striped red car", [[40, 0, 50, 10]], "wrong attribute (colour)"),
    ("the leftmost car", [[20, 0, 30, 10]], "wrong relation or ordinal"),
    ("the car", [[20, 0, 30, 10]], "right category, wrong instance"),
    ("the striped red car", [[60, 0, 70, 10]], "another object"),
    ("the striped red car", [[0, 0, 4, 4]], "part or background"),
    ("the striped red car", [[80, 80, 90, 90]], "part or background"),
    ("the striped red car", [], "no box"),
])
def test_referring_causes(text, pred, cause):
    assert referring_cause({"text": text, "targets": [0]}, REGIONS, pred, BOX_LIST) == cause


PART_REGIONS = [
    region([0, 0, 40, 20], "car", "red", "dotted", "large"),                                    # 0
    dict(region([2, 10, 10, 20], "wheel", "black", granularity="fine"), parent=0),             # 1: left wheel of 0
    dict(region([30, 10, 38, 20], "wheel", "black", granularity="fine"), parent=0),            # 2: right wheel of 0
    region([50, 0, 90, 20], "car", "red", "striped", "large"),                                  # 3
    dict(region([52, 10, 60, 20], "wheel", "black", granularity="fine"), parent=3),            # 4
    region([0, 50, 40, 70], "car", "red", "dotted", "small"),                                   # 5
    dict(region([2, 60, 10, 70], "wheel", "black", granularity="fine"), parent=5),             # 6
]


@pytest.mark.parametrize("text, pred, cause", [
    ("the left wheel of the dotted car", [[2, 10, 10, 20]], None),
    ("the left wheel of the dotted car", [[30, 10, 38, 20]], "wrong side (left/right part)"),   # the right car, the other wheel
    ("the left wheel of the dotted car", [[52, 10, 60, 20]], "wrong attribute (pattern)"),   # a striped car's wheel
    ("the left wheel of the large car", [[2, 60, 10, 70]], "wrong attribute (size)"),
    ("the left wheel of the leftmost car", [[52, 10, 60, 20]], "wrong relation or ordinal"),
    ("the wheel of the car", [[52, 10, 60, 20]], "right category, wrong instance"),
])
def test_part_expressions_are_judged_by_the_chosen_parts_object(text, pred, cause):
    boxes = [r["box"] for r in PART_REGIONS]
    assert referring_cause({"text": text, "targets": [1]}, PART_REGIONS, pred, boxes) == cause


def test_no_target_and_missing_proposal_causes():
    assert referring_cause({"text": "the green car", "targets": []}, REGIONS, [], BOX_LIST) is None
    assert referring_cause({"text": "the green car", "targets": []}, REGIONS, [[0, 0, 10, 10]], BOX_LIST) == "box for a no-target query"
    assert referring_cause({"text": "the striped red car", "targets": [0]}, REGIONS, [], BOX_LIST[1:]) == "no target proposal"


def test_detection_counts_split_misses_by_whether_a_proposal_was_there():
    targets = [[0, 0, 10, 10], [20, 0, 30, 10], [90, 90, 99, 99]]
    counts = detection_counts(targets, [[0, 0, 10, 10], [60, 0, 70, 10]], BOX_LIST)
    assert counts == {"tp": 1, "missing instance": 1, "no target proposal": 1, "extra box": 1}
    assert [instance_bin(n) for n in (1, 2, 3, 4, 9)] == ["1", "2-3", "2-3", "4+", "4+"]


def test_referring_table_rows_are_fractions():
    table = referring_table({"referring": {"attribute": {"total": 4, "correct": 3, "no box": 1}}})
    assert "| attribute | 4 | 0.75 |" in table and "| all | 4 | 0.75 |" in table


@pytest.mark.slow
def test_probe_reads_a_linear_attribute_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=400)
    x = torch.from_numpy(rng.normal(size=(400, 16))).float()
    x[:, 0] += torch.from_numpy(labels * 4.0).float()
    names = [f"c{v}" for v in labels]
    good = probe(x[:300], names[:300], x[300:], names[300:])
    assert good["accuracy"] > 0.95 and good["classes"] == 3
    noise = probe(x[:300, 1:], names[:300], x[300:, 1:], names[300:])
    assert noise["accuracy"] < good["majority"] + 0.15
    with_missing = probe(x[:300], names[:299] + [None], x[300:], names[300:])
    assert with_missing["train"] == 299


@pytest.fixture
def tiny(tiny_tokenizer_dir):
    torch.manual_seed(0)
    return load_model_and_processor("chatrex-tiny-random", tiny_tokenizer_dir)


def test_oracle_codes_state_the_matched_region(tiny):
    model, processor = tiny
    oracle = OracleFeatures(model.config, processor.image_processor)
    boxes = [[0, 0, 10, 10], [20.5, 0, 30, 10], [80, 80, 90, 90]]
    codes = oracle.codes(REGIONS, boxes, 100, 100)
    assert codes.shape == (3, model.config.object_feature_dim)
    assert torch.equal(codes, OracleFeatures(model.config, processor.image_processor).codes(REGIONS, boxes, 100, 100))  # fixed seed
    pos = codes - torch.stack([oracle.region_code(REGIONS[0]), oracle.region_code(REGIONS[1]), oracle.region_code(None)])
    # What is left is the box's position embedding: identical boxes, identical remainder.
    boat = region([0, 0, 10, 10], "boat", "blue", "plain", "small")
    assert torch.allclose(pos[0], (oracle.codes([boat], [[0, 0, 10, 10]], 100, 100) - oracle.region_code(boat))[0], atol=1e-6)
    assert not torch.allclose(pos[0], pos[1], atol=1e-3)
    # Regions 0 and 1 differ in the pattern only: their codes differ by the two pattern codes.
    diff = oracle.region_code(REGIONS[0]) - oracle.region_code(REGIONS[1])
    assert torch.allclose(diff, oracle.code("pattern", "striped") - oracle.code("pattern", "dotted"), atol=1e-6)


def test_oracle_cache_rows_follow_the_candidates(tmp_path, tiny):
    model, processor = tiny
    path = make_records(tmp_path / "data", n=3)
    cache = FeatureCache(build_cache(path, model, processor, progress=False))
    records = JsonlRecords([path])
    oracle = OracleFeatures(model.config, processor.image_processor)
    wrapped = OracleFeatureCache(cache, records, oracle)
    for i in range(len(records)):
        fused, rows = wrapped.get(i)
        assert torch.equal(fused, cache.get(i)[0])
        rec = records[i]
        expected = oracle.codes(rec["regions"], candidate_boxes(rec, *cache.size(i)), *cache.size(i))
        assert torch.allclose(rows.float(), expected, atol=2e-2)  # the cache's fp16 dtype


def test_oracle_training_needs_the_feature_cache(tmp_path, tiny_tokenizer_dir):
    path = make_records(tmp_path / "data", n=2)
    with pytest.raises(ValueError, match="oracle_object_features needs data.feature_cache"):
        tiny_config(path, tiny_tokenizer_dir, str(tmp_path / "out"), **{"data.oracle_object_features": "true"}).validate()


def test_samples_needed_follows_a_log_fit():
    from train.diagnostics.learning_curve import samples_needed, target_score

    points = [(0, 0.1), (1000, 0.5), (2000, 0.5 + 0.1 * np.log(2)), (4000, 0.5 + 0.1 * np.log(4))]
    assert samples_needed(points, 0.7) == pytest.approx(1000 * np.exp(2), rel=1e-6)
    assert samples_needed([(1000, 0.5), (2000, 0.4)], 0.9) is None  # falling: never
    assert samples_needed([(1000, 0.5)], 0.9) is None
    row = {"referring": 0.5, "no_target": 0.2, "det_precision": 0.8, "det_recall": 0.6, "region": 0.9, "caption_recall": 0.2, "caption_precision": 1.0}
    assert target_score(row) == pytest.approx((0.5 + 0.2 + 0.7 + 0.9 + 0.6) / 5)


def test_oracle_run_trains_exports_and_predicts_with_oracle_tokens(tmp_path, tiny):
    """An oracle-feature training run from a model folder, its checkpoint exported to a model
    folder, and the oracle predictor's box tokens: the projected oracle codes."""
    from safetensors.torch import load_file

    from chatrex.image_processing_chatrex import load_image
    from train.diagnostics.learning_curve import export_checkpoint
    from train.diagnostics.oracle_features import OracleFeaturePredictor
    from train.trainer import train

    model, processor = tiny
    init = tmp_path / "init"
    model.save_pretrained(init)
    processor.save_pretrained(init)
    path = make_records(tmp_path / "data", n=3)
    cfg = tiny_config(path, None, str(tmp_path / "run"), **{"model.init": str(init), "model.tokenizer": "null", "data.feature_cache": "true",
                                                            "data.oracle_object_features": "true", "train.max_steps": 2})
    train(cfg.validate())
    ckpt = tmp_path / "run" / "checkpoint-00000002"
    folder = export_checkpoint(str(ckpt), str(init), str(tmp_path / "exported"))
    trained = load_file(ckpt / "model.safetensors")
    saved = load_file(os.path.join(folder, "model.safetensors"))
    key = next(k for k in trained if "mm_object_projector" in k)
    assert torch.equal(trained[key], saved[key]) and not torch.equal(trained[key], model.state_dict()[key])

    records = list(JsonlRecords([path])[i] for i in range(3))
    predictor = OracleFeaturePredictor.from_pretrained(folder)
    predictor.use_records(records)
    rec = records[1]
    boxes = [r["box"] for r in rec["regions"]]
    predictor.set_image(load_image(rec["image"]), boxes=boxes)
    codes = predictor.oracle.codes(rec["regions"], predictor.boxes.numpy(), rec["width"], rec["height"])
    with torch.no_grad():
        expected = predictor.model.model.project_objects([codes])[0]
    assert torch.allclose(predictor._cache.object_features[0], expected, atol=1e-5)
    assert predictor.detect("red square").answer is not None  # generation runs on the swapped tokens
    with pytest.raises(KeyError, match="not among the records"):
        predictor.set_image(load_image(records[0]["image"]).rotate(90), boxes=boxes[:1])


@pytest.fixture
def bundle_predictor(tiny_bundle_dir):
    from chatrex.predictor import ChatRexPredictor

    return ChatRexPredictor.from_pretrained(str(tiny_bundle_dir))


@pytest.mark.slow
def test_analyse_counts_every_query_once(tmp_path, bundle_predictor):
    from train.diagnostics.error_causes import analyse, detection_table

    path = make_records(tmp_path / "data", n=3)
    records = [JsonlRecords([path])[i] for i in range(3)]
    result = analyse(bundle_predictor, records, per_image=2, progress=False)
    assert result["referring"] == {}  # these records have phrase queries only
    rows = result["detection"]
    assert set(rows) == {"phrase 1", "phrase no target"}
    assert rows["phrase 1"]["queries"] == 3 and rows["phrase 1"]["instances"] == 3
    one = rows["phrase 1"]
    assert one.get("tp", 0) + one.get("missing instance", 0) + one.get("no target proposal", 0) == 3
    assert "| phrase 1 | 3 | 3 |" in detection_table(result)


@pytest.mark.slow
def test_evaluate_model_gives_the_validation_row(tmp_path, bundle_predictor):
    from train.diagnostics.learning_curve import evaluate_model, target_score

    path = make_records(tmp_path / "data", n=2)
    row = evaluate_model(bundle_predictor, path, None, caption_images=1)
    assert set(row) >= {"referring", "no_target", "det_precision", "det_recall", "region", "caption_recall", "caption_precision", "target_score"}
    assert all(0.0 <= row[k] <= 1.0 for k in ("referring", "det_precision", "det_recall", "region"))
    assert row["target_score"] == pytest.approx(target_score(row), abs=1e-4)


@pytest.mark.slow
def test_probes_run_on_a_model_and_skip_attributes_the_records_lack(tmp_path, tiny):
    from train.diagnostics.feature_probes import REDUCTIONS, format_table, run

    model, processor = tiny
    records = [JsonlRecords([make_records(tmp_path / "data", n=6)])[i] for i in range(6)]
    results = run(model, processor, records[:4], records[4:], progress=False)
    assert set(results) == set(REDUCTIONS)
    assert results["encoder"]["category"]["classes"] == 2 and results["encoder"]["category"]["test"] == 5
    assert results["encoder"]["color"]["accuracy"] is None  # these records carry no attributes
    assert "| mean+max | " in format_table(results)


@pytest.mark.slow
def test_examples_check_counts_every_query(tmp_path, bundle_predictor):
    import json as _json

    from PIL import Image

    from train.diagnostics.examples_check import check

    Image.new("RGB", (64, 48), (200, 200, 200)).save(tmp_path / "a.png")
    objects = [{"category": "square", "phrase": "red square", "referring": "the red square", "box": [4, 4, 20, 20]}]
    (tmp_path / "contents.json").write_text(_json.dumps([{"image": "a.png", "objects": objects}, {"image": "a.png", "objects": objects * 2}]))
    result = check(bundle_predictor, str(tmp_path))
    assert result["total"] == 9 and result["first_image_total"] == 3
    assert result["found"] + len(result["misses"]) == 9


def test_oracle_parent_codes_say_whose_part_it_is(tiny):
    model, processor = tiny
    plain = OracleFeatures(model.config, processor.image_processor)
    with_parent = OracleFeatures(model.config, processor.image_processor, parent=True)
    boxes = [r["box"] for r in PART_REGIONS]
    a, b = plain.codes(PART_REGIONS, boxes, 100, 100), with_parent.codes(PART_REGIONS, boxes, 100, 100)
    assert torch.equal(a[0], b[0]) and torch.equal(a[3], b[3])  # whole objects: unchanged
    # Two identical wheels of differently patterned cars: the same without parents, told apart with them.
    assert torch.allclose(a[1] - plain.codes(PART_REGIONS[1:2], [boxes[1]], 100, 100)[0], torch.zeros_like(a[1]), atol=1e-6)
    extra = b[4] - a[4]
    expected = sum(with_parent.code(f"parent {f}", v) for f, v in [("category", "car"), ("color", "red"), ("pattern", "striped"), ("size", "large")])
    assert torch.allclose(extra, expected, atol=1e-5)


def test_oracle_parent_features_need_oracle_features(tmp_path, tiny_tokenizer_dir):
    path = make_records(tmp_path / "data", n=2)
    cfg = tiny_config(path, tiny_tokenizer_dir, str(tmp_path / "out"), **{"data.feature_cache": "true", "data.oracle_parent_features": "true"})
    with pytest.raises(ValueError, match="oracle_parent_features needs data.oracle_object_features"):
        cfg.validate()
