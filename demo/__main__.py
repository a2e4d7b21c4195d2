"""``python -m demo``: the options, then :func:`demo.app.serve` (which ``chatrex demo`` calls too)."""

import argparse
import sys

from .lifetime import exit_with_parent

# Before the imports below, which take seconds: a parent killed meanwhile must stop us too.
exit_with_parent()

from chatrex.cli.arguments import _device_arguments  # noqa: E402 (light: no torch)


def parse_args(argv=None) -> argparse.Namespace:
    # Parsed before demo.app is imported: --help and a bad option answer at once.
    parser = argparse.ArgumentParser(prog="python -m demo", description="Serve the ChatRex Gradio demo (chat with box answers, UPN proposals).")
    parser.add_argument("--model", default="chatrex-tiny", help="bundled model name or local folder (default chatrex-tiny)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link (off by default)")
    _device_arguments(parser)
    return parser.parse_args(argv)


args = parse_args()
from .app import serve  # noqa: E402

sys.exit(serve(model=args.model, host=args.host, port=args.port, share=args.share, device=args.device, dtype=args.dtype))
