"""What every ``chatrex`` command shares: its one error type and the checks and loaders of the
common arguments (image, phrase, boxes, --model/--upn, --device/--dtype). Subcommand modules
import these from here, never from :mod:`chatrex.cli.main`, so that nothing imports the
entry point back."""

from __future__ import annotations

import argparse
import json

DEFAULT_MODEL = "chatrex-tiny"


class UserError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""


def _load_image(path: str):
    from ..image_processing_chatrex import load_image

    try:
        return load_image(path)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None


def _text_argument(value: str, what: str) -> str:
    if not value.strip():
        raise UserError(f"{what} is empty")
    return value.strip()


def _read_boxes(path: str | None):
    """A JSON list of pixel xyxy boxes ``[[x1, y1, x2, y2], ...]`` (the official demos' format),
    or ``{"boxes": [...]}``; ``None`` without ``--boxes``."""
    if path is None:
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read boxes from {path}: {err}") from None
    boxes = data.get("boxes") if isinstance(data, dict) else data
    if not isinstance(boxes, list) or not all(isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b) for b in boxes):
        raise UserError(f"{path}: expected a JSON list of [x1, y1, x2, y2] boxes in pixels")
    return boxes


def _upn_argument(value: str | None) -> str | None:
    """``--upn``: a path or a bundled name (``upn-tiny``) as given (``UPNPredictor`` resolves
    those and says what is missing); a Hugging Face id as its cached or downloaded snapshot: the
    folder when it has config.json, else its one ``.pth`` checkpoint."""
    from ..hub import NotFoundError, looks_like_hub_id, resolve_path

    if value is None or not looks_like_hub_id(value):
        return value
    snapshot = resolve_path(value, label="--upn ", then="pass --upn {dir}")
    if (snapshot / "config.json").is_file():
        return str(snapshot)
    checkpoints = sorted(snapshot.glob("*.pth"))
    if len(checkpoints) != 1:
        raise NotFoundError(f"--upn {value}: its snapshot {snapshot} has no config.json and {len(checkpoints)} .pth files; "
                            f"pass the folder or checkpoint you mean")
    return str(checkpoints[0])


def _predictor(args):
    from ..predictor import ChatRexPredictor

    try:
        return ChatRexPredictor.from_pretrained(args.model, upn=_upn_argument(args.upn), device=args.device, torch_dtype=args.dtype,
                                                max_new_tokens=args.max_new_tokens)
    except (ValueError, RuntimeError, OSError) as err:
        # e.g. a model folder without upn/, a --upn folder that does not exist, or weights
        # that miss a key (strict loading names it)
        raise UserError(_one_line(err)) from None


def _image_and_predictor(args):
    """Check the image, load the model, and encode the image once (with the proposal network's
    boxes, or those of ``--boxes``)."""
    _check_device(args)
    image = _load_image(args.image)
    boxes = _read_boxes(getattr(args, "boxes", None))
    predictor = _predictor(args)
    try:
        predictor.set_image(image, boxes=boxes)
    except (ValueError, RuntimeError) as err:  # e.g. a model without a UPN and no --boxes
        raise UserError(_one_line(err)) from None
    return image, predictor


def _check_device(args) -> None:
    """Fail fast, before loading anything, on a device this machine lacks (e.g. --device cuda
    without CUDA) or an unknown dtype."""
    from ..predictor import resolve_device_dtype

    try:
        resolve_device_dtype(args.device, getattr(args, "dtype", None))
    except ValueError as err:
        raise UserError(_one_line(err)) from None


def _max_new_tokens(value: str) -> int:
    from ..predictor import MAX_NEW_TOKENS

    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_NEW_TOKENS:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {MAX_NEW_TOKENS}], got {value!r}")
    return n


def _device_arguments(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default float32 on cpu, bfloat16 on cuda)")


def demo_arguments(p) -> None:
    """The demo's options, shared by ``chatrex demo`` and ``python -m demo``."""
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"bundled model name or local folder (default {DEFAULT_MODEL})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="create a public Gradio share link (off by default)")
    _device_arguments(p)


def _boxes_argument(p) -> None:
    p.add_argument("--boxes", metavar="FILE.json",
                   help="candidate boxes instead of the proposal network's: a JSON list of [x1, y1, x2, y2] in pixels (at most 100)")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
