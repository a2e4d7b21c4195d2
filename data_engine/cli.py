"""``chatrex data-engine``: turn unlabelled images into grounded records.

    chatrex data-engine run --input photos/ --output out/engine
    chatrex data-engine run --input list.jsonl --output out/engine --config engine.yaml --runner ray --limit 1000
    chatrex data-engine stats out/engine
"""

from __future__ import annotations

import argparse
import os
import sys


class _UserError(Exception):
    pass


def cmd_run(args) -> int:
    from .config import load_engine_config

    if not os.path.exists(args.input):
        raise _UserError(f"input {args.input!r} does not exist")
    if args.limit is not None and args.limit < 1:
        raise _UserError(f"--limit must be >= 1, got {args.limit}")
    try:
        config = load_engine_config(args.config, args.overrides)
    except ValueError as err:
        raise _UserError(f"config: {err}") from None
    if args.runner == "ray":
        from functools import partial

        from .runners.ray_runner import run_ray

        run = partial(run_ray, verbose=args.verbose)
    else:
        from .runners.local import run_local as run
    try:
        summary = run(config, args.input, args.output, limit=args.limit, retry_failed=args.retry_failed, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished records are saved in {args.output}; run the same command again to continue", file=sys.stderr)
        return 130
    except ValueError as err:
        raise _UserError(str(err)) from None
    print(summary.line())
    return 0


def cmd_stats(args) -> int:
    from .stats import collect_stats, format_stats, stats_json

    if not os.path.isdir(args.output):
        raise _UserError(f"{args.output!r} is not an engine output folder")
    print(stats_json(args.output) if args.json else format_stats(collect_stats(args.output)))
    return 0


def build_parser(prog: str = "chatrex data-engine") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="The data engine: captioning -> phrases -> grounding -> region captions -> verify/rewrite.",
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the pipeline over images (resumable)", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example: chatrex data-engine run --input examples/ --output runs/engine --limit 3\n"
                              "Re-running the same command after a crash or Ctrl-C continues where it stopped.")
    p.add_argument("--input", required=True, help="a folder of images (recursive), a .txt list of paths, or a .jsonl list of {\"image\": path, ...metadata}")
    p.add_argument("--output", required=True, help="output folder: records-NNNNN.jsonl shards, manifest.jsonl, failures.jsonl")
    p.add_argument("--config", help="engine YAML (see data_engine/configs/engine.yaml); defaults: the bundled chatrex-tiny does every model job")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. --set grounding.box_threshold=0.3 (repeatable)")
    p.add_argument("--runner", choices=("local", "ray"), default="local", help="local (default): this process; ray: a Ray cluster, ray.actors workers running the stages side by side (see ray.* in the config)")
    p.add_argument("--limit", type=int, help="only the first N input images")
    p.add_argument("--retry-failed", action="store_true", help="process images that failed in an earlier run again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="with --runner ray: show Ray's own log lines, progress bars and worker output")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("stats", help="counts per stage, rejects and field coverage of an output folder", epilog="example: chatrex data-engine stats runs/engine")
    p.add_argument("output", help="an engine output folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)
    return parser


def main(argv: list[str] | None = None, prog: str = "chatrex data-engine") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return args.func(args)
    except _UserError as err:
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(prog="python -m data_engine.cli"))
