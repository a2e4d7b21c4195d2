"""``python -m train.diagnostics.examples_check``: the example-image part of the shipping rule.

Every object of ``examples/contents.json`` is asked for by category, phrase and referring
expression (42 queries for the three shipped images); a query counts as found when one answered
box overlaps the object by IoU >= 0.5. The rule (MODEL_CARD.md): a candidate must find every
object of the first image (what the README and the demo show) and no fewer of the others than
the shipped model.

Example::

    python -m train.diagnostics.examples_check --model runs/continue-cached/models/step-00000100
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from PIL import Image

LEVELS = ("category", "phrase", "referring")
SHIPPED_FOUND = 37  # the shipped chatrex-tiny's count on the three shipped images (MODEL_CARD.md)
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")


def check(predictor, examples_dir: str = EXAMPLES) -> dict:
    """``{"found", "total", "first_image_found", "first_image_total", "misses": [...]}``."""
    from .error_causes import _iou

    with open(os.path.join(examples_dir, "contents.json")) as f:
        contents = json.load(f)
    out = {"found": 0, "total": 0, "first_image_found": 0, "first_image_total": 0, "misses": []}
    for n, example in enumerate(contents):
        predictor.set_image(Image.open(os.path.join(examples_dir, example["image"])))
        for obj in example["objects"]:
            for level in LEVELS:
                det = predictor.detect(obj[level])
                best = float(_iou([obj["box"]], det.boxes).max()) if det.boxes else 0.0
                ok = best >= 0.5
                out["found"] += ok
                out["total"] += 1
                if n == 0:
                    out["first_image_found"] += ok
                    out["first_image_total"] += 1
                if not ok:
                    out["misses"].append({"image": example["image"], "level": level, "query": obj[level], "answer": det.answer, "best_iou": round(best, 2)})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.diagnostics.examples_check", description=__doc__.split("\n\n")[0],
                                epilog="Example::" + __doc__.split("Example::")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="chatrex-tiny", help="bundled model name or model folder (default chatrex-tiny)")
    args = p.parse_args(argv)
    from chatrex.predictor import ChatRexPredictor

    try:
        predictor = ChatRexPredictor.from_pretrained(args.model, max_new_tokens=24)  # the examples tests' budget
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = check(predictor)
    for miss in result["misses"]:
        where = "no box" if not miss["best_iou"] else f"best IoU {miss['best_iou']:.2f} < 0.5"
        print(f"missed  {miss['image']}  {miss['level']:<9}  {miss['query']!r} ({where}): {miss['answer']}")
    print(f"found {result['found']} of {result['total']}; first image {result['first_image_found']} of {result['first_image_total']}")
    ok = result["first_image_found"] == result["first_image_total"] and result["found"] >= SHIPPED_FOUND
    print(f"shipping rule (every object of the first image, and at least the shipped model's {SHIPPED_FOUND}): {'passes' if ok else 'fails'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
