"""``chatrex convert ...``: checkpoint converters, one sub-subcommand each.

``chatrex convert official SRC_DIR OUT_DIR`` converts a released RexSeek-3B / ChatRex-7B
folder (``chatrex.convert.official``); ``chatrex convert upn OFFICIAL.pth OUT_DIR`` runs
``chatrex.convert.upn`` (the released ``upn_large.pth`` to a safetensors folder;
``--to-official`` goes back). To add a converter, append a ``Converter`` to ``CONVERTERS``:
``add_arguments(parser)`` declares its arguments (keep it import-light so ``chatrex --help``
stays fast) and ``runner`` names ``module:function`` taking the parsed args and returning an
exit code; the module is imported only when that converter runs.
"""
from __future__ import annotations

import argparse
import importlib
import os
from dataclasses import dataclass
from typing import Callable


def _upn_arguments(p: argparse.ArgumentParser) -> None:
    # The arguments of chatrex.convert.upn.run (``python -m chatrex.convert.upn`` runs this command).
    p.add_argument("src", help="official upn_large.pth (or, with --to-official, a converted folder)")
    p.add_argument("dst", help="output folder (or, with --to-official, the .pth to write)")
    p.add_argument("--to-official", action="store_true", help="convert a converted folder back to the official layout")


def _compose_arguments(p: argparse.ArgumentParser) -> None:
    # The arguments of chatrex.convert.compose.run (declared here: that module imports torch).
    p.add_argument("--clip", required=True, help="transformers CLIP folder (CLIPModel or CLIPVisionModel), e.g. clip-vit-large-patch14-336/")
    p.add_argument("--convnext", required=True, help="ConvNeXt .safetensors/.bin in the open_clip (visual.trunk.*) or timm layout")
    p.add_argument("--llm", required=True, help="transformers causal-LM folder with its tokenizer (Qwen2.5, Llama, ...)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the --llm folder)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype of the whole model (default auto: the LLM's stored dtype)")


def _official_arguments(p: argparse.ArgumentParser) -> None:
    # The arguments of chatrex.convert.official.run (declared here: that module imports torch).
    p.add_argument("src", help="folder in the released models' layout: config.json, model.safetensors (or shards + index), tokenizer files")
    p.add_argument("dst", help="output folder (loads with --model, ChatRexPredictor.from_pretrained and train.chatrex)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype of the converted model (default auto: as stored)")
    p.add_argument("--chat-template", default=None, metavar="NAME|FILE.jinja",
                   help="chat format: chatml (RexSeek's; default for Qwen), xtuner_vicuna (default for Llama/Vicuna, "
                        "i.e. ChatRex-7B, whose template is not published), vicuna_v1, or a .jinja file")


# -- argument checks: run before the converter module (torch, transformers) is imported, so a
# wrong path fails in a moment with one line, and a hub id becomes its local snapshot folder
# (chatrex.hub: the Hugging Face cache, or a download when the hub answers). A path that looks
# local and does not exist is never sent to the hub.
CONVNEXT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin")


def _weights_file(path, label: str):
    """A checkpoint file as it is; in a folder (e.g. a hub snapshot of a LAION ConvNeXt) the
    first of :data:`CONVNEXT_FILES` it holds."""
    from ..hub import NotFoundError

    if path.is_file():
        return path
    for name in CONVNEXT_FILES:
        if (path / name).is_file():
            return path / name
    raise NotFoundError(f"{label}{path} is a folder without {', '.join(CONVNEXT_FILES)}; pass the checkpoint file")


def _check_compose(args: argparse.Namespace) -> None:
    from ..hub import resolve_path

    args.clip = str(resolve_path(args.clip, "--clip ", "a transformers CLIP folder, or a Hugging Face id such as openai/clip-vit-large-patch14-336",
                                 then="pass --clip {dir}"))
    convnext = resolve_path(args.convnext, "--convnext ", "an open_clip or timm ConvNeXt .safetensors/.bin file, or a Hugging Face id such as "
                            "laion/CLIP-convnext_large_d.laion2B-s26B-b102K-augreg", then="pass --convnext {dir}/open_clip_model.safetensors")
    args.convnext = str(_weights_file(convnext, "--convnext "))
    args.llm = str(resolve_path(args.llm, "--llm ", "a transformers causal-LM folder with its tokenizer, or a Hugging Face id such as "
                                "Qwen/Qwen2.5-7B", then="pass --llm {dir}"))
    if args.tokenizer is not None:
        args.tokenizer = str(resolve_path(args.tokenizer, "--tokenizer ", "a tokenizer folder, or a Hugging Face id",
                                          then="pass --tokenizer {dir}"))


def _check_official(args: argparse.Namespace) -> None:
    from ..hub import resolve_path

    args.src = str(resolve_path(args.src, "", "a folder in the released layout, or a Hugging Face id such as IDEA-Research/RexSeek-3B",
                                then="pass {dir} as SRC"))


def _check_upn(args: argparse.Namespace) -> None:
    from ..hub import NotFoundError

    if not os.path.exists(args.src):
        raise NotFoundError(f"{args.src} does not exist (" + ("a converted UPN folder)" if args.to_official else "the official upn_large.pth)"))


@dataclass(frozen=True)
class Converter:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    runner: str  # "module:function", called with the parsed args, returns the exit code
    epilog: str = ""
    check: Callable[[argparse.Namespace], None] | None = None  # light argument checks, before the runner's import


CONVERTERS = [
    Converter("upn", "released UPN checkpoint (upn_large.pth) -> safetensors folder for UPNModel/UPNPredictor",
              _upn_arguments, "chatrex.convert.upn:run", "example: chatrex convert upn upn_large.pth upn-large/", _check_upn),
    Converter("compose", "pretrained parts (CLIP, LAION/timm ConvNeXt, a causal LM) -> ChatRex folder, the stage-1 starting point",
              _compose_arguments, "chatrex.convert.compose:run",
              "example: chatrex convert compose --clip clip-vit-large-patch14-336/ --convnext open_clip_model.safetensors "
              "--llm Qwen2.5-7B/ --out chatrex-7b-init/  (each part may also be a Hugging Face id, e.g. --llm Qwen/Qwen2.5-7B)",
              _check_compose),
    Converter("official", "released RexSeek-3B / ChatRex-7B folder (official layout) -> ChatRex folder with the official numerics",
              _official_arguments, "chatrex.convert.official:run",
              "example: chatrex convert official RexSeek-3B/ rexseek-3b/ && chatrex detect photo.jpg \"the cup\" --model rexseek-3b/ --upn upn_large.pth  "
              "(SRC may also be a Hugging Face id, e.g. IDEA-Research/RexSeek-3B)", _check_official),
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
        from .arguments import UserError

        module, function = conv.runner.split(":")
        try:
            if conv.check is not None:
                conv.check(args)
            return getattr(importlib.import_module(module), function)(args)
        except (ValueError, OSError) as err:
            raise UserError(str(err)) from None
    return run
