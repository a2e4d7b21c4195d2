import pytest

from chatrex.evaluation import (
    ClassCounts,
    coco_map,
    detection_precision_recall,
    greedy_match,
    proposal_recall,
    referring_correct,
)
from chatrex.evaluation.runner import EvalTable, _sample


def test_greedy_match_one_to_one():
    gt = [[0, 0, 10, 10], [20, 0, 30, 10]]
    # Two predictions on the same object: only one counts.
    assert greedy_match([[0, 0, 10, 10], [1, 0, 11, 10]], gt) == 1
    assert greedy_match([[0, 0, 10, 10], [20, 0, 30, 10]], gt) == 2
    # IoU of [0,0,10,10] and [5,0,15,10] is 50/150 = 1/3 < 0.5.
    assert greedy_match([[5, 0, 15, 10]], gt) == 0
    assert greedy_match([], gt) == 0 and greedy_match(gt, []) == 0


def test_class_averaged_precision_recall_hand_computed():
    counts = {"car": ClassCounts(), "tree": ClassCounts(), "boat": ClassCounts()}
    # car: 2 GT, 3 predictions, 2 correct -> P 2/3, R 1.
    counts["car"].add([[0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 60, 60]], [[0, 0, 10, 10], [20, 0, 30, 10]])
    # tree: 2 GT, 1 prediction, correct -> P 1, R 1/2.
    counts["tree"].add([[0, 20, 10, 30]], [[0, 20, 10, 30], [40, 40, 45, 45]])
    # boat: 1 GT, no prediction -> no precision, R 0.
    counts["boat"].add([], [[70, 70, 80, 80]])
    p, r = detection_precision_recall(counts)
    assert p == pytest.approx((2 / 3 + 1) / 2)
    assert r == pytest.approx((1 + 0.5 + 0) / 3)


def test_coco_map_perfect_and_empty():
    images = [{"gt": {"car": [[0, 0, 10, 10]]}, "pred": {"car": [([0, 0, 10, 10], 0.9)]}, "width": 100, "height": 100}]
    assert coco_map(images)["mAP"] == pytest.approx(1.0)
    wrong = [{"gt": {"car": [[0, 0, 10, 10]]}, "pred": {"car": [([50, 50, 60, 60], 0.9)]}, "width": 100, "height": 100}]
    assert coco_map(wrong)["mAP"] == pytest.approx(0.0)
    assert coco_map([{"gt": {"car": [[0, 0, 10, 10]]}, "pred": {}}]) == {"mAP": 0.0, "AP50": 0.0}


def test_referring_rules():
    target = [[0, 0, 10, 10]]
    assert referring_correct([[0, 0, 10, 9]], target)
    assert not referring_correct([[50, 50, 60, 60], [0, 0, 10, 10]], target)  # the first box counts
    assert not referring_correct([], target)
    assert referring_correct([], [])  # negative query, no box: correct
    assert not referring_correct([[0, 0, 1, 1]], [])


def test_proposal_recall_at_k():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]
    props = [[0, 0, 10, 10], [100, 100, 110, 110], [20, 20, 30, 31]]
    assert proposal_recall(props, gt, k=100) == (2, 3)
    assert proposal_recall(props, gt, k=1) == (1, 3)
    assert proposal_recall([], gt) == (0, 3) and proposal_recall(props, []) == (0, 0)


def test_sampling_is_reproducible_and_ordered():
    items = list(range(20))
    a, b = _sample(items, 5, "img1.png"), _sample(items, 5, "img1.png")
    assert a == b == sorted(a) and len(a) == 5
    assert _sample(items, None, "x") == items and _sample(items[:3], 5, "x") == items[:3]


def test_table_format():
    text = EvalTable("referring", {"acc@0.5": 0.5, "queries": 4}).format()
    assert "acc@0.5" in text and "0.5000" in text and "4" in text


def test_grounded_caption_scores_whole_objects_hand_computed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import chatrex.evaluation.runner as runner

    records = [
        {"image": "a.png", "regions": [{"box": [0, 0, 10, 10], "granularity": "coarse"}, {"box": [20, 0, 30, 10], "granularity": "coarse"},
                                       {"box": [0, 0, 5, 5], "granularity": "fine"}]},
        {"image": "b.png", "regions": [{"box": [0, 0, 10, 10], "granularity": "coarse"}]},
    ]
    answers = iter([
        # image a: one whole object found twice (counts once), one part, one miss -> 1 of 2 wholes, 1 of 2 boxes
        [SimpleNamespace(boxes=[[0, 0, 10, 10]]), SimpleNamespace(boxes=[[0, 0, 10, 10], [0, 0, 5, 5]])],
        # image b: found -> 1 of 1, 1 of 1
        [SimpleNamespace(boxes=[[0, 0, 10, 10]])],
    ])

    class FakePredictor:
        def set_image(self, image):
            pass

        def grounded_caption(self, max_new_tokens=None):
            assert max_new_tokens >= 256  # a caption that names every object must not be cut short
            return SimpleNamespace(spans=next(answers))

    monkeypatch.setattr(runner, "_image", lambda path: None)
    metrics = runner._grounded_caption(FakePredictor(), records, None, 8)
    assert metrics["whole-object recall@0.5"] == pytest.approx(2 / 3)
    assert metrics["grounding precision@0.5"] == pytest.approx(2 / 3)
    assert metrics["whole objects"] == 3 and metrics["grounded boxes"] == 3
