"""``python -m train.chatrex``: train ChatRex, one stage per run.

Examples::

    python -m train.chatrex --config train/configs/stage1.yaml
    python -m train.chatrex --config train/configs/stage2.yaml --set train.max_steps=500
    python -m train.chatrex --config train/configs/stage2.yaml --resume
    torchrun --nproc_per_node 2 -m train.chatrex --config train/configs/stage2.yaml
    accelerate launch --config_file train/configs/accelerate/multi_gpu.yaml -m train.chatrex --config ...
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.chatrex",
        description="Train ChatRex for one stage (1 alignment, 2 perception, 3 joint) from JSONL records.",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config (see train/configs/). Without it, defaults plus --set values are used.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value, e.g. --set train.max_steps=10 (repeatable; values parsed as YAML)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.output_dir (same data order, optimizer, scheduler and RNG state)")
    parser.add_argument("--output-dir", help="shortcut for --set train.output_dir=...")
    parser.add_argument("--max-steps", type=int, help="shortcut for --set train.max_steps=...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    try:
        cfg = load_config(args.config, overrides).validate()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .loop import check_output_dir
    from .trainer import train  # heavy imports after argument checking

    try:
        check_output_dir(cfg.train.output_dir, args.resume)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    # Every rank prints its digest: equal digests show the replicas stayed in sync.
    rank = os.environ.get("RANK", "0")
    print(f"[rank {rank}] final weights sha256 {result.weights_digest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
