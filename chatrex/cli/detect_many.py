"""``chatrex detect`` with several images or ``--inputs FILE.jsonl``: the command-line side of
:mod:`chatrex.detect_many` (argument checks, the output file, resume and the progress bar)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

from ..detect_many import DetectInput, pending, read_inputs, run
from .arguments import UserError, _check_device, _predictor, _text_argument


def _inputs(args) -> list[DetectInput]:
    if args.inputs is not None:
        try:
            return read_inputs(args.inputs)
        except FileNotFoundError:
            raise UserError(f"--inputs {args.inputs}: no such file") from None
        except ValueError as err:
            raise UserError(str(err)) from None
    *images, phrase = args.items
    phrase = _text_argument(phrase, "phrase")
    return [DetectInput(image, phrase, image) for image in images]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def check_common(args) -> None:
    """Checks that hold for one image too: run before any model is loaded."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.resume and args.output is None:
        raise UserError("--resume continues an --output file; give --output FILE.jsonl")
    if args.items and (os.path.isfile(args.items[-1]) or args.items[-1].lower().endswith(IMAGE_SUFFIXES)):
        raise UserError(f"the last argument {args.items[-1]!r} looks like an image file; the phrase goes last: IMAGE... PHRASE")


def _check(args) -> None:
    for flag, value in (("--out", args.out), ("--json", args.json), ("--boxes", args.boxes)):
        if value:
            raise UserError(f"{flag} is for one image; with several images or --inputs the results are JSON lines (see --help)")
    if args.output is not None:
        folder = os.path.dirname(os.path.abspath(args.output))
        if os.path.isdir(args.output) or not os.path.isdir(folder):
            raise UserError(f"cannot write {args.output}: " + ("it is a folder" if os.path.isdir(args.output) else f"no folder {folder}"))
        if args.inputs is not None and os.path.exists(args.output) and os.path.samefile(args.inputs, args.output):
            raise UserError("--output is the --inputs file; write the results to another file")
    if args.output is not None and not args.resume and os.path.isfile(args.output) and os.path.getsize(args.output) > 0:
        raise UserError(f"{args.output} already exists; add --resume to continue it, or remove it to start again")


def detect_many(args) -> int:
    _check(args)
    inputs = _inputs(args)
    todo, old_errors = pending(inputs, args.output) if args.resume else (inputs, 0)
    if not todo:
        retry = f" ({old_errors} of them errors; delete those lines to retry them)" if old_errors else ""
        print(f"all {len(inputs)} inputs already have a line in {args.output}{retry}", file=sys.stderr)
        return 0
    _check_device(args)
    predictor = _predictor(args)
    try:
        out = open(args.output, "a", encoding="utf-8") if args.output is not None else sys.stdout
    except OSError as err:
        raise UserError(f"cannot write {args.output}: {err}") from None
    # The results themselves show progress on a terminal; a bar would only garble them.
    show = args.verbose or not out.isatty()
    try:
        with tqdm(total=len(inputs), initial=len(inputs) - len(todo), desc="detect", unit="input", file=sys.stderr, disable=not show) as bar:
            errors = run(predictor, todo, out, batch_size=args.batch_size, progress=bar)
    finally:
        if out is not sys.stdout:
            out.close()
    if errors:
        where = args.output if args.output is not None else "the output"
        print(f"{errors} of {len(todo)} inputs could not be answered; their lines in {where} say why", file=sys.stderr)
    return 0
