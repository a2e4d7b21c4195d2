"""Throughput of the bundled model: the shared image prefix, batched questions, many images.

    .venv/bin/python benchmarks/throughput.py --json-out runs/bench/throughput.json

Every comparison is a ratio of two measurements taken in this one process, on the same inputs,
after a warm-up, so the ratios hold on a loaded machine better than the absolute times. Each
comparison also checks that both ways give the same answers (greedy decoding, same tokens).

1. Questions per image (5 and 20, on each example image): every question runs its full
   prompt (``share_prefix=False``, the old path) vs continuing the image's cached prefix, one
   at a time, vs ``detect_batch``.
2. Many images (``--images`` synthetic test scenes, one phrase each): ``set_image`` +
   ``detect`` image by image vs ``detect_images`` in batches of ``--batch-size``.
3. The proposal network alone: ``predict`` image by image vs ``predict_batch`` at 8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
from PIL import Image
from report import emit  # benchmarks/report.py, next to this script

from chatrex.predictor import ChatRexPredictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _queries(entry: dict, n: int) -> list[str]:
    """``n`` detection phrases about one example image: its objects' categories, phrases and
    referring expressions, then phrases with no target, repeated in order as needed."""
    pool = [q for o in entry["objects"] for q in (o["category"], o["phrase"], o["referring"])]
    pool += ["giraffe", "the striped green star", "red circle", "the large car", "bicycle"]
    return [pool[i % len(pool)] for i in range(n)]


def questions_per_image(p: ChatRexPredictor, full: ChatRexPredictor, counts: list[int], batch_size: int) -> dict:
    contents = json.load(open(os.path.join(EXAMPLES, "contents.json")))
    images = [Image.open(os.path.join(EXAMPLES, e["image"])).convert("RGB") for e in contents]
    out = {}
    for n in counts:
        totals = {"full_prompt_s": 0.0, "shared_prefix_s": 0.0, "detect_batch_s": 0.0}
        same = True
        for entry, image in zip(contents, images):
            queries = _queries(entry, n)
            for predictor in (full, p):
                predictor.set_image(image)  # encoded before timing: only the questions are compared
            p.detect(queries[0]), full.detect(queries[0])  # warm-up
            p._require().prefixes.clear()  # the prefix's first computation is part of what is timed
            t_full, a = timed(lambda: [full.detect(q).answer for q in queries])
            t_prefix, b = timed(lambda: [p.detect(q).answer for q in queries])
            p._require().prefixes.clear()
            t_batch, c = timed(lambda: [d.answer for d in p.detect_batch(queries, batch_size=batch_size)])
            same &= a == b == c
            totals["full_prompt_s"] += t_full
            totals["shared_prefix_s"] += t_prefix
            totals["detect_batch_s"] += t_batch
        out[f"{n} per image"] = {
            **{k: round(v, 2) for k, v in totals.items()},
            "queries": n * len(images),
            "speedup_shared_prefix": round(totals["full_prompt_s"] / totals["shared_prefix_s"], 2),
            "speedup_detect_batch": round(totals["full_prompt_s"] / totals["detect_batch_s"], 2),
            "same_answers": same,
        }
    return out


def many_images(p: ChatRexPredictor, data: str, n: int, batch_size: int) -> dict:
    from chatrex.utils.jsonl import read_jsonl

    records = list(read_jsonl(os.path.join(data, "records.jsonl")))[:n]
    images = [Image.open(os.path.join(data, r["image"])).convert("RGB") for r in records]
    phrases = [r["regions"][0]["category"] for r in records]
    p.detect_images(images[:2], phrases[:2], batch_size=2)  # warm-up

    def one_by_one():
        out = []
        for image, phrase in zip(images, phrases):
            p._recent.clear()
            p.set_image(image)
            out.append(p.detect(phrase).answer)
        return out

    def batched():
        p._recent.clear()
        return [d.answer for d in p.detect_images(images, phrases, batch_size=batch_size)]

    t_one, a = timed(one_by_one)
    t_batch, b = timed(batched)
    return {"images": n, "batch_size": batch_size, "one_by_one_s": round(t_one, 2), "detect_images_s": round(t_batch, 2),
            "images_per_s_one_by_one": round(n / t_one, 2), "images_per_s_batched": round(n / t_batch, 2),
            "speedup": round(t_one / t_batch, 2), "same_answers": a == b}


def upn_batches(p: ChatRexPredictor, data: str, n: int, sizes: list[int]) -> dict:
    from chatrex.utils.jsonl import read_jsonl

    records = list(read_jsonl(os.path.join(data, "records.jsonl")))[:n]
    images = [Image.open(os.path.join(data, r["image"])).convert("RGB") for r in records]
    p._propose_batch(images[:2])  # warm-up
    out = {}
    for size in sizes:
        t, _ = timed(lambda: [x for i in range(0, n, size) for x in p._propose_batch(images[i : i + size])])
        out[f"batch {size}"] = {"seconds": round(t, 2), "images_per_s": round(n / t, 2)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="chatrex-tiny")
    parser.add_argument("--data", default=os.path.join(ROOT, "data", "synth", "test"),
                        help="a records folder for the many-image parts (default data/synth/test: `chatrex eval --data synth:test` makes it)")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--queries", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.data, "records.jsonl")):
        print(f"error: {args.data}/records.jsonl is missing; make it with `.venv/bin/chatrex eval --data synth:test --task proposals --limit 1`",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    p = ChatRexPredictor.from_pretrained(args.model)
    full = ChatRexPredictor(p.model, p.processor, p.upn, share_prefix=False)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads",
        "load_average_at_start": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
        "model": args.model,
        "questions_per_image": questions_per_image(p, full, args.queries, args.batch_size),
        "many_images": many_images(p, args.data, args.images, args.batch_size),
        "upn": upn_batches(p, args.data, args.images, [1, args.batch_size]),
    }
    emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
