"""Command line: ``python -m data_engine.synthetic --split train --n 1000 --seed 0 --out DIR``."""

from __future__ import annotations

import argparse
import sys
import time

from .generator import MIN_SIZE, write_split
from .vocabulary import HELDOUT_PAIRS, SPLITS

_EPILOG = f"""\
Writes DIR/images/<split>_s<seed>_<index>.png and DIR/records.jsonl (one docs/records.md record
per line, image paths relative to DIR). Output is a pure function of (split, seed, n, size):
rerunning gives byte-identical files. The heldout split contains (colour, category) pairs
that train/val/test never produce: {', '.join(f'{c} {k}' for c, k in sorted(HELDOUT_PAIRS))}.

example:
  python -m data_engine.synthetic --split train --n 1000 --seed 0 --out data/synth/train
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _image_size(text: str) -> int:
    value = _positive_int(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_SIZE} pixels, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_engine.synthetic",
        description="Render the ChatRex synthetic world: procedural 2-D scenes of objects made of "
                    "parts, with grounded captions, region annotations, referring expressions, "
                    "QA and detection queries.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", required=True, choices=SPLITS,
                        help="which split to generate (heldout = unseen colour/category pairs)")
    parser.add_argument("--n", required=True, type=_positive_int, help="number of images (> 0)")
    parser.add_argument("--seed", required=True, type=_nonnegative_int,
                        help="base seed (>= 0); image i uses an RNG derived from (split, seed, i)")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--size", type=_image_size, default=512,
                        help=f"image side in pixels (>= {MIN_SIZE}, default 512)")
    parser.add_argument("--workers", type=_nonnegative_int, default=0,
                        help="render with this many processes (0 or 1: in-process; same output)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        path = write_split(args.out, args.split, args.n, args.seed, size=args.size,
                           workers=args.workers, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("interrupted: records.jsonl was not written", file=sys.stderr)
        return 130
    except OSError as err:
        print(f"error: cannot write to {args.out!r}: {err}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(f"wrote {args.n} images and {path} in {elapsed:.1f}s ({args.n / elapsed:.1f} img/s)",
          file=sys.stderr)
    return 0
