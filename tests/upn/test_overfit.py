"""upn-tiny must be able to learn: overfit one synthetic image with 3 boxes."""
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.ops import box_convert, box_iou

from upn import UPNModel, get_config
from upn.image_processing import preprocess

SIZE = 256
BOXES = [(30, 40, 120, 110), (150, 30, 230, 200), (60, 150, 130, 230)]


def _scene() -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (200, 200, 190))
    draw = ImageDraw.Draw(img)
    draw.rectangle(BOXES[0], fill=(220, 30, 30))
    draw.ellipse(BOXES[1], fill=(30, 160, 40))
    draw.rectangle(BOXES[2], fill=(40, 60, 210))
    return img


def _recall_at(scores, boxes, gt_xyxy, k):
    top = scores.topk(k).indices
    iou = box_iou(box_convert(boxes[top], "cxcywh", "xyxy"), gt_xyxy)
    return (iou.max(0).values >= 0.5).float().mean().item()


@pytest.mark.slow
def test_overfit_one_image():
    torch.manual_seed(0)
    cfg = get_config("upn-tiny")
    cfg.image.short_side = cfg.image.max_size = SIZE
    model = UPNModel(cfg)
    x, _ = preprocess(_scene(), cfg.image)
    x = x[None]
    gt = torch.tensor(BOXES, dtype=torch.float32) / SIZE
    targets = [{"boxes": box_convert(gt, "xyxy", "cxcywh")}]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    model.eval()
    with torch.no_grad():
        out = model(x, "coarse")
    # Not vacuous: at init the best-scored boxes are not the objects.
    assert _recall_at(out.scores[0], out.boxes[0], gt, 3) < 1.0
    history = []
    for step in range(1, 151):
        model.train()
        losses = model(x, "coarse", targets=targets)
        opt.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                out = model(x, "coarse")
            r10 = _recall_at(out.scores[0], out.boxes[0], gt, 10)
            # Stricter than asked: the 3 best-scored boxes must be the 3 objects.
            # and score above the predictor's default min_score 0.3 (0.5 here).
            r3 = _recall_at(out.scores[0], out.boxes[0], gt, 3)
            third = out.scores[0].topk(3).values[-1].item()
            history.append((step, round(losses["loss"].item(), 3), r10, r3, round(third, 3)))
            if r10 == 1.0 and r3 == 1.0 and third > 0.5:
                break
    # The bound is in steps, not seconds: the 2-core box is shared, so wall time
    # varies (about 6 s when idle, converging near step 30).
    assert history[-1][2:4] == (1.0, 1.0) and history[-1][4] > 0.5, history
