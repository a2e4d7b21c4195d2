import pytest
import torch
from torchvision.ops import generalized_box_iou

from upn import HungarianMatcher


def test_hand_3x4_cost_matrix():
    # Optimum by inspection: row0->col1 (1), row1->col3 (2), row2->col0 (1) = 4;
    # the greedy per-row choice would collide on column 1.
    cost = torch.tensor([[9.0, 1.0, 9.0, 9.0],
                         [9.0, 1.5, 9.0, 2.0],
                         [1.0, 9.0, 9.0, 9.0]])
    rows, cols = HungarianMatcher.solve(cost)
    assert rows.tolist() == [0, 1, 2]
    assert cols.tolist() == [1, 3, 0]
    assert cost[rows, cols].sum().item() == pytest.approx(4.0)


def test_solve_rejects_nan():
    with pytest.raises(RuntimeError, match="NaN"):
        HungarianMatcher.solve(torch.tensor([[float("nan"), 1.0]]))


def test_giou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0],   # IoU 1/7, hull 9 -> 1/7 - 2/9
                      [0.0, 0.0, 2.0, 2.0],   # identical -> 1
                      [3.0, 0.0, 4.0, 1.0]])  # disjoint: IoU 0, hull 8, union 5 -> -3/8
    giou = generalized_box_iou(a, b)[0]
    assert giou.tolist() == pytest.approx([1 / 7 - 2 / 9, 1.0, -3 / 8])


def test_matcher_picks_matching_boxes():
    matcher = HungarianMatcher(cost_class=0.0, cost_l1=5.0, cost_giou=2.0)
    preds = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9]]])
    targets = [{"boxes": torch.tensor([[0.69, 0.71, 0.2, 0.2], [0.21, 0.2, 0.1, 0.12]])}]
    (src, tgt), = matcher(torch.zeros(1, 3), preds, targets)
    assert dict(zip(tgt.tolist(), src.tolist())) == {0: 1, 1: 0}


def test_matcher_zero_targets():
    (src, tgt), = HungarianMatcher()(torch.zeros(1, 3), torch.rand(1, 3, 4), [{"boxes": torch.zeros(0, 4)}])
    assert src.numel() == 0 and tgt.numel() == 0


def test_matcher_rejects_bad_costs():
    with pytest.raises(ValueError, match="cost"):
        HungarianMatcher(cost_class=0.0, cost_l1=0.0, cost_giou=0.0)
