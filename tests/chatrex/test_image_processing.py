import numpy as np
import pytest
import torch
from PIL import Image

from chatrex.image_processing_chatrex import ChatRexImageProcessor, ImageMeta
from upn.image_processing import to_rgb_image


@pytest.fixture
def proc():
    return ChatRexImageProcessor(low_size=64, high_size=256)


@pytest.mark.parametrize("size", [(160, 120), (120, 160), (97, 97), (1, 300)])
def test_box_round_trip_is_exact(proc, size):
    w, h = size
    rng = np.random.default_rng(1)
    x1 = rng.uniform(0, w - 1, 20)
    y1 = rng.uniform(0, h - 1, 20)
    boxes = np.stack([x1, y1, np.minimum(x1 + rng.uniform(0.5, w, 20), w), np.minimum(y1 + rng.uniform(0.5, h, 20), h)], 1)
    meta = ImageMeta(w, h)
    norm = proc.normalize_boxes(boxes, meta)
    assert norm.min() >= 0 and norm.max() <= 1
    back = proc.denormalize_boxes(norm, meta).numpy()
    assert np.abs(back - boxes).max() < 1e-4  # the transform is exact up to float32 rounding


def test_normalised_boxes_follow_padding(proc):
    # 200x100 image is padded to 200x200 at the bottom: y is divided by 200, not 100.
    norm = proc.normalize_boxes([[0, 0, 100, 100]], ImageMeta(200, 100))
    assert torch.allclose(norm, torch.tensor([[0.0, 0.0, 0.5, 0.5]]))


def test_pad_to_square_keeps_image_top_left(proc):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    sq = proc.pad_to_square(img)
    assert sq.size == (40, 40)
    assert sq.getpixel((39, 19)) == (255, 0, 0)
    assert sq.getpixel((0, 30)) == proc.pad_value


def test_preprocess_shapes_and_normalisation(proc):
    low, high, meta = proc.preprocess(Image.new("RGB", (30, 50), (123, 117, 104)))
    assert low.shape == (3, 64, 64) and high.shape == (3, 256, 256)
    assert (meta.width, meta.height) == (30, 50)
    # The colour equals the CLIP mean, so it normalises to ~0 everywhere (padding too).
    assert high.abs().max() < 0.02


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (20, 10), 128),
        Image.new("RGBA", (20, 10), (255, 0, 0, 0)),
        Image.new("P", (20, 10), 3),
        Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16)),
        Image.new("I", (20, 10), 70000),
        Image.new("F", (20, 10), 0.5),
        np.zeros((10, 20), dtype=np.uint8),
        np.full((10, 20, 4), 200, dtype=np.uint8),
        np.full((10, 20, 3), 40000, dtype=np.uint16),
        np.random.default_rng(0).random((10, 20, 3)),
    ],
)
def test_modes_are_converted_to_rgb(image):
    rgb = to_rgb_image(image)
    assert rgb.mode == "RGB" and rgb.size == (20, 10)


def test_sixteen_bit_scaled_not_clipped():
    rgb = to_rgb_image(Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)))
    assert rgb.getpixel((0, 0)) == (128, 128, 128)


def test_transparent_rgba_composited_on_white():
    assert to_rgb_image(Image.new("RGBA", (4, 4), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("image", [Image.new("RGB", (0, 10)), np.zeros((0, 5, 3), dtype=np.uint8)])
def test_zero_size_image_raises(image):
    with pytest.raises(ValueError, match="zero size"):
        to_rgb_image(image)


@pytest.mark.parametrize(
    "boxes, match",
    [
        ([[0, 0, float("nan"), 5]], "non-finite"),
        ([[0, 0, float("inf"), 5]], "non-finite"),
        ([[5, 0, 5, 5]], "x2 <= x1"),
        ([[0, 6, 5, 5]], "x2 <= x1 or y2 <= y1"),
        ([[200, 200, 300, 300]], "outside"),
        ([[1, 2, 3]], "shape"),
    ],
)
def test_bad_boxes_raise(proc, boxes, match):
    with pytest.raises(ValueError, match=match):
        proc.normalize_boxes(boxes, ImageMeta(100, 100))


def test_boxes_partly_outside_are_clipped(proc):
    norm = proc.normalize_boxes([[-10, -5, 150, 50]], ImageMeta(100, 100))
    assert torch.allclose(norm, torch.tensor([[0.0, 0.0, 1.0, 0.5]]))


def test_too_many_boxes_suggests_topk(proc):
    boxes = [[0, 0, 10, 10]] * 101
    with pytest.raises(ValueError, match="top-100"):
        proc.normalize_boxes(boxes, ImageMeta(100, 100))


def test_bad_processor_settings():
    with pytest.raises(ValueError, match="low_size"):
        ChatRexImageProcessor(low_size=0)
    with pytest.raises(ValueError, match="image_std"):
        ChatRexImageProcessor(image_std=(0.0, 1.0, 1.0))


# ChatRex's processor and UPN's preprocessing share upn.image_processing.to_rgb_image: the cases on
# which their two former copies disagreed must now behave identically through both.
def _both_pipelines(image):
    from upn.config import ImageConfig
    from upn.image_processing import preprocess

    _, high, _ = ChatRexImageProcessor(low_size=32, high_size=64).preprocess(image)
    upn_pixels, _ = preprocess(image, ImageConfig(short_side=48, max_size=64))
    return high, upn_pixels


@pytest.mark.parametrize(
    "image, match",
    [
        (np.full((8, 8, 3), 300.0, dtype=np.float32), r"\[0, 1\] or \[0, 255\], got \[300, 300\]"),
        (np.full((8, 8, 3), -0.5), r"got \[-0.5, -0.5\]"),
        (np.where(np.eye(8, dtype=bool)[..., None], np.nan, 0.5).repeat(3, 2), "NaN or inf"),
        (np.full((8, 8), np.inf, dtype=np.float32), "NaN or inf"),
        (Image.fromarray(np.full((8, 8), 1000.0, dtype=np.float32)), "got \\[1000, 1000\\]"),
    ],
)
def test_bad_float_images_raise_in_both_pipelines(image, match):
    for run in (lambda: ChatRexImageProcessor().preprocess(image), lambda: _both_pipelines(image)):
        with pytest.raises(ValueError, match=match):
            run()


def _palette_with_transparent_entry() -> Image.Image:
    image = Image.new("P", (8, 6), 0)
    image.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 4, 6))
    image.info["transparency"] = 1  # palette entry 1 (red) is fully transparent
    return image


@pytest.mark.parametrize(
    "image, expected",
    [
        # float arrays: [0, 1] scaled by 255 and rounded (not truncated), [0, 255] rounded
        (np.full((6, 8, 3), 0.5, dtype=np.float32), np.full((6, 8, 3), 128)),
        (np.full((6, 8, 3), 254.6), np.full((6, 8, 3), 255)),
        # palette: the transparent entry composited on white, the opaque one kept
        (_palette_with_transparent_entry(), np.concatenate([np.full((6, 4, 3), 255), np.tile([10, 20, 30], (6, 4, 1))], 1)),
        # RGBA: half-transparent red on white
        (Image.new("RGBA", (8, 6), (255, 0, 0, 128)), np.tile([255, 127, 127], (6, 8, 1))),
        (Image.new("PA", (8, 6)), np.full((6, 8, 3), 255)),
    ],
)
def test_disagreeing_cases_convert_once_for_both_pipelines(image, expected):
    rgb = to_rgb_image(image)
    assert np.array_equal(np.asarray(rgb), expected)
    direct = _both_pipelines(Image.fromarray(np.asarray(expected, dtype=np.uint8)))
    for got, want in zip(_both_pipelines(image), direct):
        assert torch.equal(got, want)
