"""Add UPN proposals to records (the ``"proposals"`` field training mixes into box lists).

    python -m data_engine.proposals data/synth/train/records.jsonl --upn runs/upn-tiny/final \\
        --out data/synth/train/records_upn.jsonl --limit 1000

Each output record gets ``"proposals": [{"box": [x1, y1, x2, y2], "score": s, "granularity": g}]``
(pixel xyxy). The output is written to a temporary file and renamed when complete.

``--batch-size N`` runs UPN on up to N images per forward pass (default 1 on CPU, 8 on a GPU:
see ``DEFAULT_BATCH_SIZE``). Only images that UPN resizes to the same size share a pass; they
are grouped within a look-ahead of ``N * 4`` records, and the output keeps the input order.
Padding mixed sizes into one batch would change the boxes: the backbone's convolutions and its
GroupNorm see the padded area, so a padded image gets other features than the same image alone
(docs/upn.md). Grouped this way, every batch size gives the boxes of ``--batch-size 1`` (scores
can differ by about 1e-6 before they are rounded to 4 decimals: batched matmuls).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tqdm.auto import tqdm

from chatrex.utils.atomic import atomic_write
from chatrex.utils.jsonl import read_jsonl

DEFAULT_BATCH_SIZE = {"cpu": 1, "accelerator": 8}
"""``--batch-size`` when not given. On CPU a batch buys no clear speed-up (upn-tiny on 2 cores:
batch 8 was within the run-to-run noise, about 10%, of batch 1) and costs memory (batch 8 at
384 px: +320 MB peak for upn-tiny; upn-large works at up to 800x1333 px with a Swin-L, far more),
so 1 keeps the old behaviour there. On a GPU one small image leaves the device mostly idle, so 8
(not measured here)."""
LOOKAHEAD = 4
"""Records read ahead per batch slot: same-size images are grouped within ``batch_size * LOOKAHEAD``
consecutive records (bounds the decoded images held in memory)."""


class RecordError(Exception):
    """A record whose image cannot be used; the message names the record and the image."""


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def predict_grouped(predictor, images: list, batch_size: int, on_batch=None, **predict_kwargs) -> list:
    """``[predictor.predict(im, **predict_kwargs) for im in images]``, computed in batches of up to
    ``batch_size`` images that UPN resizes to the same size (so no batch is padded and every image
    gets its single-image boxes). ``on_batch(n)`` is called after each forward pass of n images."""
    from PIL import Image

    from upn.image_processing import resized_size

    cfg = predictor.image_config
    groups: dict[tuple[int, int], list[int]] = {}  # first-appearance order (dicts keep insertion order)
    for i, image in enumerate(images):
        w, h = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])  # PIL or numpy
        groups.setdefault(resized_size(w, h, cfg.short_side, cfg.max_size, cfg.size_rounding), []).append(i)
    results: list = [None] * len(images)
    for indices in groups.values():
        for k in range(0, len(indices), batch_size):
            part = indices[k : k + batch_size]
            for i, props in zip(part, predictor.predict_batch([images[i] for i in part], **predict_kwargs)):
                results[i] = props
            if on_batch is not None:
                on_batch(len(part))
    return results


def _load(root: str, rec, line: int, path: str):
    """The record's image, or ``RecordError`` naming the record (line, id) and the image."""
    from chatrex.image_processing_chatrex import load_image

    where = f"{path}:{line}" + (f" (id {rec['id']!r})" if isinstance(rec, dict) and "id" in rec else "")
    if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
        raise RecordError(f"record {where} has no \"image\" path")
    image = os.path.join(root, rec["image"])
    try:
        return load_image(image)
    except (OSError, ValueError) as err:
        raise RecordError(f"record {where}: cannot read its image {image}: {err}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_engine.proposals", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", help="input records.jsonl, or a folder holding one (image paths relative to its folder)")
    parser.add_argument("--upn", required=True, help="UPN save_pretrained folder, or a bundled name (upn-tiny)")
    parser.add_argument("--out", required=True, help="output records file (keep it in the same folder so image paths stay valid)")
    parser.add_argument("--limit", type=int, help="only the first N records")
    parser.add_argument("--min-score", type=float, default=0.1)
    parser.add_argument("--nms-iou", type=float, default=0.6)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=_batch_size, metavar="N",
                        help=f"images per UPN forward pass (default: {DEFAULT_BATCH_SIZE['cpu']} on CPU, {DEFAULT_BATCH_SIZE['accelerator']} "
                             "on a GPU). Only images resized to the same size share a pass, so the boxes do not depend on N")
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="process only records I, I+N, I+2N, ... (run N processes at once, then concatenate their outputs)")
    args = parser.parse_args(argv)
    from chatrex.evaluation.runner import missing_records_message, records_file

    if os.path.isdir(args.records):  # a records folder: its records.jsonl
        args.records = records_file(args.records)
    if not os.path.isfile(args.records):
        print(f"error: {missing_records_message(args.records, eval_command=False)}", file=sys.stderr)
        return 2
    from chatrex.convert.upn import load_upn_predictor

    try:
        shard, shards = (int(v) for v in args.shard.split("/"))
        if not 0 <= shard < shards:
            raise ValueError
    except ValueError:
        parser.error(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
    try:
        predictor = load_upn_predictor(args.upn, device=args.device)
    except ValueError as err:  # e.g. --device cuda on a machine without CUDA
        parser.error(str(err))
    if args.batch_size is None:
        args.batch_size = DEFAULT_BATCH_SIZE["cpu" if predictor.device.type == "cpu" else "accelerator"]
    root = os.path.dirname(os.path.abspath(args.records))
    records = list(read_jsonl(args.records, line_numbers=True))  # (line, record)
    if args.limit is not None:
        records = records[: args.limit]
    records = records[shard::shards]
    window = args.batch_size * LOOKAHEAD
    try:
        with atomic_write(args.out) as out, tqdm(total=len(records), desc="proposals", unit="img") as bar:
            for start in range(0, len(records), window):
                chunk = records[start : start + window]
                images = [_load(root, rec, line, args.records) for line, rec in chunk]
                found = predict_grouped(predictor, images, args.batch_size, on_batch=bar.update, prompt_type="both",
                                        min_score=args.min_score, nms_iou=args.nms_iou, max_boxes=100)
                for (_, rec), props in zip(chunk, found):
                    rec["proposals"] = [{"box": [round(v, 2) for v in b], "score": round(s, 4), "granularity": g}
                                        for b, s, g in zip(props.boxes.tolist(), props.scores.tolist(), props.granularity)]
                    out.write(json.dumps(rec) + "\n")
    except RecordError as err:
        print(f"error: {err}; nothing written to {args.out}", file=sys.stderr)
        return 1
    print(f"wrote {len(records)} records with proposals to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
