import pytest
import torch

from upn import HungarianMatcher, LossConfig, SetCriterion, UPNModel


def _outputs(b=2, q=5, requires_grad=True):
    logits = torch.randn(b, q, requires_grad=requires_grad)
    boxes = torch.rand(b, q, 4).mul(0.4).add(0.2).requires_grad_(requires_grad)
    return {"logits": logits, "boxes": boxes,
            "aux": [{"logits": logits * 0.5, "boxes": boxes}],
            "enc": {"logits": logits * 2, "boxes": boxes}}


def test_zero_targets_finite_and_backprop():
    crit = SetCriterion(HungarianMatcher(), LossConfig())
    out = _outputs()
    losses = crit(out, [{"boxes": torch.zeros(0, 4)}, {"boxes": torch.zeros(0, 4)}])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_l1"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    assert {"loss_class_dec0", "loss_class_enc", "loss"} <= set(losses)
    losses["loss"].backward()
    assert torch.isfinite(out["logits"].grad).all()


def test_perfect_prediction_has_zero_box_loss():
    crit = SetCriterion(HungarianMatcher(), LossConfig(aux_loss=False, encoder_loss=False))
    tgt = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    out = {"logits": torch.tensor([[10.0, -10.0]]), "boxes": torch.cat([tgt, tgt * 0.5])[None]}
    losses = crit(out, [{"boxes": tgt}])
    assert losses["loss_l1"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert set(losses) == {"loss_class", "loss_l1", "loss_giou", "loss"}


def test_model_rejects_bad_targets(small_config):
    model = UPNModel(small_config)
    x = torch.randn(1, 3, 64, 64)
    bad = {
        "NaN": torch.tensor([[0.5, float("nan"), 0.1, 0.1]]),
        "outside": torch.tensor([[0.95, 0.5, 0.3, 0.1]]),
        "non-positive": torch.tensor([[0.5, 0.5, 0.0, 0.1]]),
        r"\(K, 4\)": torch.tensor([0.5, 0.5, 0.1]),
    }
    for msg, boxes in bad.items():
        with pytest.raises(ValueError, match=msg):
            model(x, "fine", targets=[{"boxes": boxes}])
    with pytest.raises(ValueError, match="2 targets"):
        model(x, "fine", targets=[{"boxes": torch.zeros(0, 4)}] * 2)


def test_model_loss_with_zero_targets_and_padding(small_config):
    model = UPNModel(small_config)
    x = torch.randn(2, 3, 64, 96)
    mask = torch.ones(2, 64, 96, dtype=torch.long)
    mask[1, 40:, 60:] = 0
    mask[1, :, 60:] = 0
    losses = model(x, ["fine", "coarse"], pixel_mask=mask,
                   targets=[{"boxes": torch.zeros(0, 4)}, {"boxes": [[0.5, 0.5, 0.2, 0.3]]}])
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert model.fine_grained_prompt.grad is not None and model.coarse_grained_prompt.grad is not None
