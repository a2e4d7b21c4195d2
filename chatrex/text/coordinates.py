"""Coordinate-output answers: the baseline the ChatRex paper argues against.

Instead of retrieving box indices, the model writes each box as quantised coordinates, as
Qwen2-VL does: ``<ground>red car</ground><objects>(120,45),(300,210)</objects>`` with x and y in
``bins`` (1000) bins over the image width and height. Several boxes follow each other inside
``<objects>``; an empty group names no box. Used by ``data.answer_format: coordinates`` in
training and by ``benchmarks/coords_vs_indices.py``.
"""

from __future__ import annotations

import re

from .markup import OBJECT, OBJECTS_END, OBJECTS_START, rewrite_object_lists, span_regex

BINS = 1000
_BOX = re.compile(r"\((\d{1,4}),(\d{1,4})\),\((\d{1,4}),(\d{1,4})\)")
# The index grammar's span with boxes, not <objN> tokens, in its list.
_SPAN = span_regex(r"(.*?)")


def quantize(box, width: float, height: float, bins: int = BINS) -> str:
    """Pixel xyxy -> ``"(x1,y1),(x2,y2)"`` in ``[0, bins)`` bins of the image size."""
    x1, y1, x2, y2 = (float(v) for v in box)
    q = [min(bins - 1, max(0, int(v / s * bins))) for v, s in ((x1, width), (y1, height), (x2, width), (y2, height))]
    return f"({q[0]},{q[1]}),({q[2]},{q[3]})"


def dequantize(values, width: float, height: float, bins: int = BINS) -> list[float]:
    """Bin indices (x1, y1, x2, y2) -> pixel xyxy at bin centres."""
    x1, y1, x2, y2 = (int(v) for v in values)
    return [(x1 + 0.5) / bins * width, (y1 + 0.5) / bins * height, (x2 + 0.5) / bins * width, (y2 + 0.5) / bins * height]


def to_coordinate_conversation(conversation: list[dict], boxes, width: float, height: float, bins: int = BINS) -> list[dict]:
    """Rewrite an index-format conversation: answer groups ``<objects><obj3></objects>`` become
    coordinates of those boxes, and ``<objN>`` in questions becomes "the region (x1,y1),(x2,y2)".

    ``boxes``: the sample's box list (K, 4) pixel xyxy that the indices refer to.
    """

    def coords(i: int) -> str:
        return quantize(boxes[i], width, height, bins)

    out = []
    for turn in conversation:
        text = rewrite_object_lists(turn["content"], lambda indices: OBJECTS_START + "".join(coords(i) for i in indices) + OBJECTS_END)
        text = OBJECT.sub(lambda m: f"the region {coords(int(m.group(1)))}", text)
        out.append({**turn, "content": text})
    return out


def parse_coordinate_answer(text: str, width: float, height: float, bins: int = BINS) -> list[tuple[str, list[list[float]]]]:
    """``[(phrase, [pixel xyxy, ...]), ...]`` for every grounded span; malformed boxes are skipped."""
    spans = []
    for phrase, body in _SPAN.findall(text):
        boxes = [dequantize(m, width, height, bins) for m in _BOX.findall(body) if all(int(v) < bins for v in m)]
        spans.append((phrase.strip(), [b for b in boxes if b[2] > b[0] and b[3] > b[1]]))
    return spans
