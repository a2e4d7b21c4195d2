import numpy as np
import pytest
import torch
from PIL import Image

from upn import Proposals, UPNModel, UPNPredictor
from upn.image_processing import resized_size, to_rgb_image


@pytest.fixture
def predictor(small_config):
    torch.manual_seed(0)
    return UPNPredictor(UPNModel(small_config))


def _images():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (70, 50, 3), dtype=np.uint8)
    return {
        "RGB": Image.fromarray(rgb),
        "L": Image.fromarray(rgb[..., 0]),
        "RGBA": Image.fromarray(rng.integers(0, 255, (40, 90, 4), dtype=np.uint8)),
        "P": Image.fromarray(rgb).convert("P"),
        "I;16": Image.fromarray(rng.integers(0, 65535, (33, 47), dtype=np.uint16)),
        "np-gray": rgb[..., 1],
        "np-float": rng.random((30, 200, 3)).astype(np.float32),
        "np-rgba": rng.integers(0, 255, (20, 20, 4), dtype=np.uint8),
        "np-1ch": rgb[..., :1],
        "np-thin": rng.integers(0, 255, (3, 300, 3), dtype=np.uint8),   # extreme aspect ratio
        "np-1px": np.full((1, 1, 3), 7, dtype=np.uint8),
    }


def test_modes_and_sizes(predictor):
    for name, image in _images().items():
        props = predictor.predict(image, prompt_type="both", min_score=0.0, max_boxes=7)
        w, h = (image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0]))
        assert isinstance(props, Proposals), name
        assert props.image_size == (w, h), name
        assert 0 < len(props) <= 7, name
        assert props.boxes.dtype == torch.float32 and props.boxes.shape == (len(props), 4)
        assert (props.boxes[:, 0::2] <= w).all() and (props.boxes[:, 1::2] <= h).all() and (props.boxes >= 0).all()
        assert (props.boxes[:, 2:] >= props.boxes[:, :2]).all()
        assert torch.all(props.scores[:-1] >= props.scores[1:])
        assert set(props.granularity) <= {"fine", "coarse"} and len(props.granularity) == len(props)


def test_granularity_follows_prompt(predictor):
    img = _images()["RGB"]
    for t in ("fine", "coarse"):
        props = predictor.predict(img, prompt_type=t, min_score=0.0, max_boxes=5)
        assert props.granularity == [t] * len(props)


def test_empty_when_nothing_scores(predictor):
    props = predictor.predict(_images()["RGB"], min_score=1.01)
    assert len(props) == 0 and props.boxes.shape == (0, 4) and props.granularity == []


def test_bad_inputs(predictor):
    with pytest.raises(ValueError, match="0x5"):
        predictor.predict(np.zeros((5, 0, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="zero size"):
        to_rgb_image(Image.new("RGB", (0, 4)))
    with pytest.raises(ValueError, match="prompt_type"):
        predictor.predict(_images()["RGB"], prompt_type="medium")
    with pytest.raises(ValueError, match="numpy image"):
        predictor.predict(np.zeros((4, 4, 2), dtype=np.uint8))


def test_i16_is_rescaled_not_clipped():
    img = Image.fromarray(np.full((4, 4), 65535 // 2, dtype=np.uint16))
    assert 120 <= np.asarray(to_rgb_image(img))[0, 0, 0] <= 135


def test_resize_rule():
    assert resized_size(640, 480, 800, 1333) == (1067, 800)
    assert resized_size(2000, 500, 800, 1333) == (1333, 333)   # capped by the long side
    assert resized_size(300, 600, 512, 853) == (426, 853)
