"""Add UPN proposals to records (the ``"proposals"`` field training mixes into box lists).

    python -m data_engine.proposals data/synth/train/records.jsonl --upn runs/upn-tiny/model \\
        --out data/synth/train/records_upn.jsonl --limit 1000

Each output record gets ``"proposals": [{"box": [x1, y1, x2, y2], "score": s, "granularity": g}]``
(pixel xyxy). The output is written to a temporary file and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tqdm.auto import tqdm

from chatrex.jsonl import read_jsonl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_engine.proposals", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", help="input records.jsonl, or a folder holding one (image paths relative to its folder)")
    parser.add_argument("--upn", required=True, help="UPN save_pretrained folder")
    parser.add_argument("--out", required=True, help="output records file (keep it in the same folder so image paths stay valid)")
    parser.add_argument("--limit", type=int, help="only the first N records")
    parser.add_argument("--min-score", type=float, default=0.1)
    parser.add_argument("--nms-iou", type=float, default=0.6)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="process only records I, I+N, I+2N, ... (run N processes at once, then concatenate their outputs)")
    args = parser.parse_args(argv)
    from chatrex.evaluation.runner import missing_records_message, records_file

    if os.path.isdir(args.records):  # a records folder: its records.jsonl
        args.records = records_file(args.records)
    if not os.path.isfile(args.records):
        print(f"error: {missing_records_message(args.records, eval_command=False)}", file=sys.stderr)
        return 2
    from chatrex.image_processing import load_image
    from upn import UPNPredictor

    try:
        shard, shards = (int(v) for v in args.shard.split("/"))
        if not 0 <= shard < shards:
            raise ValueError
    except ValueError:
        parser.error(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
    try:
        predictor = UPNPredictor.from_pretrained(args.upn, device=args.device)
    except ValueError as err:  # e.g. --device cuda on a machine without CUDA
        parser.error(str(err))
    root = os.path.dirname(os.path.abspath(args.records))
    records = list(read_jsonl(args.records))
    if args.limit is not None:
        records = records[: args.limit]
    records = records[shard::shards]
    tmp = args.out + ".tmp"
    with open(tmp, "w") as out:
        for rec in tqdm(records, desc="proposals"):
            props = predictor.predict(load_image(os.path.join(root, rec["image"])), prompt_type="both", min_score=args.min_score, nms_iou=args.nms_iou, max_boxes=100)
            rec["proposals"] = [{"box": [round(v, 2) for v in b], "score": round(s, 4), "granularity": g}
                                for b, s, g in zip(props.boxes.tolist(), props.scores.tolist(), props.granularity)]
            out.write(json.dumps(rec) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {len(records)} records with proposals to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
