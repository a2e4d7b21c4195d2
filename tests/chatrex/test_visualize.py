"""Label placement in draw_boxes: inside the image, beside the box, not on top of each other."""

import itertools

import numpy as np
import pytest
from PIL import Image

from chatrex.visualize import draw_boxes, place_labels, text_color_for


def _inside(rect, size):
    return 0 <= rect[0] < rect[2] <= size[0] and 0 <= rect[1] < rect[3] <= size[1]


def _overlaps(a, b):
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_label_goes_above_the_box_when_there_is_room():
    assert place_labels((200, 100), [[50, 40, 120, 90]], [(30, 12)]) == [(50, 28, 80, 40)]


def test_labels_at_the_edges_are_shifted_into_the_image():
    size = (200, 100)
    boxes = [[0, 0, 40, 30],       # top-left corner: no room above
             [185, 60, 240, 120],  # runs off the right and bottom edges
             [-30, -30, -5, -5]]   # entirely outside
    rects = place_labels(size, boxes, [(60, 12)] * 3)
    assert all(_inside(r, size) for r in rects)
    assert rects[0] == (0, 0, 60, 12)  # inside the box's top edge


def test_label_wider_than_the_image_is_cut_to_it():
    assert place_labels((50, 40), [[10, 10, 20, 20]], [(80, 12)]) == [(0, 0, 50, 12)]


def test_no_label_gives_none():
    assert place_labels((100, 100), [[10, 10, 50, 50], [20, 20, 60, 60]], [None, (20, 10)])[0] is None


@pytest.mark.parametrize("layout", ["same box", "row of small boxes", "grid at the top edge"])
def test_crowded_labels_do_not_overlap(layout):
    size = (400, 300)
    if layout == "same box":
        boxes = [[150, 120, 250, 200]] * 6
    elif layout == "row of small boxes":
        boxes = [[20 + 30 * i, 100, 45 + 30 * i, 130] for i in range(10)]
    else:
        boxes = [[x, y, x + 40, y + 40] for x, y in itertools.product(range(0, 400, 50), (0, 50))]
    rects = place_labels(size, boxes, [(70, 14)] * len(boxes))
    assert all(_inside(r, size) for r in rects)
    assert not any(_overlaps(a, b) for a, b in itertools.combinations(rects, 2))


def test_impossible_crowding_still_places_every_label_inside():
    size = (60, 40)
    rects = place_labels(size, [[10, 10, 50, 30]] * 12, [(50, 15)] * 12)
    assert len(rects) == 12 and all(_inside(r, size) for r in rects)


def test_draw_boxes_keeps_labels_inside_and_in_box_colour():
    image = Image.new("RGB", (120, 80), (255, 255, 255))
    drawn = np.asarray(draw_boxes(image, [[0, 0, 60, 40], [70, 50, 119, 79]], ["top-left object", "corner"], [(0, 114, 178), (230, 159, 0)]))
    assert drawn.shape == (80, 120, 3)
    blue = np.all(drawn == (0, 114, 178), axis=-1)
    assert blue[1:5, 1:20].any()  # the first label sits inside its box's top edge, in its colour
    assert np.asarray(image).min() == 255  # the input is not drawn on


def test_text_colour_contrasts_with_background():
    assert text_color_for((240, 228, 66)) == (0, 0, 0)
    assert text_color_for((0, 114, 178)) == (255, 255, 255)
