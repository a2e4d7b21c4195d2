"""``chatrex convert ...``: checkpoint converters, one sub-subcommand each.

``chatrex convert official SRC_DIR OUT_DIR`` converts a released RexSeek-3B / ChatRex-7B
folder (``chatrex.official.convert``); ``chatrex convert upn OFFICIAL.pth OUT_DIR`` runs ``upn.convert`` (the released
``upn_large.pth`` to a safetensors folder; ``--to-official`` goes back). To add a
converter, append a ``Converter`` to ``CONVERTERS``: ``add_arguments(parser)`` declares
its arguments (keep it import-light so ``chatrex --help`` stays fast) and ``runner``
names ``module:function`` taking the parsed args and returning an exit code; the
module is imported only when that converter runs.
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Callable


def _upn_arguments(p: argparse.ArgumentParser) -> None:
    # Same arguments as ``python -m upn.convert`` (upn.convert.add_arguments).
    p.add_argument("src", help="official upn_large.pth (or, with --to-official, a converted folder)")
    p.add_argument("dst", help="output folder (or, with --to-official, the .pth to write)")
    p.add_argument("--to-official", action="store_true", help="convert a converted folder back to the official layout")


def _compose_arguments(p: argparse.ArgumentParser) -> None:
    # The arguments of chatrex.convert_compose.run (declared here: that module imports torch).
    p.add_argument("--clip", required=True, help="transformers CLIP folder (CLIPModel or CLIPVisionModel), e.g. clip-vit-large-patch14-336/")
    p.add_argument("--convnext", required=True, help="ConvNeXt .safetensors/.bin in the open_clip (visual.trunk.*) or timm layout")
    p.add_argument("--llm", required=True, help="transformers causal-LM folder with its tokenizer (Qwen2.5, Llama, ...)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the --llm folder)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype of the whole model (default auto: the LLM's stored dtype)")


def _official_arguments(p: argparse.ArgumentParser) -> None:
    # The arguments of chatrex.official.convert.run (declared here: that module imports torch).
    p.add_argument("src", help="folder in the released models' layout: config.json, model.safetensors (or shards + index), tokenizer files")
    p.add_argument("dst", help="output folder (loads with --model, ChatRexPredictor.from_pretrained and train.chatrex)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype of the converted model (default auto: as stored)")
    p.add_argument("--chat-template", default=None, metavar="NAME|FILE.jinja",
                   help="chat format: chatml (RexSeek's; default for Qwen), xtuner_vicuna (default for Llama/Vicuna, "
                        "i.e. ChatRex-7B, whose template is not published), vicuna_v1, or a .jinja file")


@dataclass(frozen=True)
class Converter:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    runner: str  # "module:function", called with the parsed args, returns the exit code
    epilog: str = ""


CONVERTERS = [
    Converter("upn", "released UPN checkpoint (upn_large.pth) -> safetensors folder for UPNModel/UPNPredictor",
              _upn_arguments, "upn.convert:run", "example: chatrex convert upn upn_large.pth upn-large/"),
    Converter("compose", "pretrained parts (CLIP, LAION/timm ConvNeXt, a causal LM) -> ChatRex folder, the stage-1 starting point",
              _compose_arguments, "chatrex.convert_compose:run",
              "example: chatrex convert compose --clip clip-vit-large-patch14-336/ --convnext open_clip_model.safetensors "
              "--llm Qwen2.5-7B/ --out chatrex-7b-init/"),
    Converter("official", "released RexSeek-3B / ChatRex-7B folder (official layout) -> ChatRex folder with the official numerics",
              _official_arguments, "chatrex.official.convert:run",
              "example: chatrex convert official RexSeek-3B/ rexseek-3b/ && chatrex detect photo.jpg \"the cup\" --model rexseek-3b/ --upn upn_large.pth"),
]


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``convert`` and its sub-subcommands on the top-level ``subparsers``."""
    parser = subparsers.add_parser("convert", help="convert released checkpoints to this project's layout",
                                   description="Convert released checkpoints; see chatrex convert KIND --help.")
    kinds = parser.add_subparsers(dest="kind", required=True)
    for conv in CONVERTERS:
        p = kinds.add_parser(conv.name, help=conv.help, description=conv.help, epilog=conv.epilog)
        conv.add_arguments(p)
        p.set_defaults(func=_runner(conv))
    return parser


def _runner(conv: Converter):
    def run(args) -> int:
        from .cli import UserError

        module, function = conv.runner.split(":")
        try:
            return getattr(importlib.import_module(module), function)(args)
        except (ValueError, OSError) as err:
            raise UserError(str(err)) from None
    return run
