"""``python -m train.bundle``: package trained ChatRex + UPN folders as one bundled model.

    python -m train.bundle --chatrex runs/chatrex-tiny/stage3/final --upn runs/upn-tiny/final \\
        --out chatrex/bundled/chatrex-tiny

The ChatRex weights are stored in fp16 (half the size in git); ``ChatRexPredictor`` loads them
back as fp32. The UPN goes in the ``upn/`` subfolder, where the predictor looks for it. The
folder is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import torch

from chatrex import ChatRexForConditionalGeneration, ChatRexProcessor
from chatrex.predictor import UPN_SUBDIR
from chatrex.utils.atomic import replace_dir


def bundle(chatrex_dir: str, upn_dir: str, out: str, fp16: bool = True) -> None:
    from upn import UPNModel

    model = ChatRexForConditionalGeneration.from_pretrained(chatrex_dir, dtype=torch.float32)
    if fp16:
        model = model.half()
    upn = UPNModel.from_pretrained(upn_dir)
    if fp16:
        upn = upn.half()
    with replace_dir(out) as tmp:
        model.save_pretrained(tmp)
        ChatRexProcessor.from_pretrained(chatrex_dir).save_pretrained(tmp)
        upn.save_pretrained(os.path.join(tmp, UPN_SUBDIR))
        card = os.path.join(out, "MODEL_CARD.md")
        if os.path.isfile(card):  # keep the hand-written card across re-bundling
            shutil.copy(card, os.path.join(tmp, "MODEL_CARD.md"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.bundle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chatrex", required=True, help="ChatRex save_pretrained folder (model + processor)")
    parser.add_argument("--upn", required=True, help="UPN save_pretrained folder")
    parser.add_argument("--out", required=True, help="bundle folder to write")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16)")
    args = parser.parse_args(argv)
    for name in ("chatrex", "upn"):
        if not os.path.isfile(os.path.join(getattr(args, name), "config.json")):
            print(f"error: --{name} {getattr(args, name)!r} has no config.json", file=sys.stderr)
            return 2
    bundle(args.chatrex, args.upn, args.out, fp16=not args.fp32)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
