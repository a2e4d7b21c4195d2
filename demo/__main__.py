"""``python -m demo``: the options, then :func:`demo.app.serve` (which ``chatrex demo`` calls too)."""

import argparse
import sys

from .lifetime import exit_with_parent

# Before the imports below, which take seconds: a parent killed meanwhile must stop us too.
exit_with_parent()

from chatrex.cli.arguments import demo_arguments  # noqa: E402 (light: no torch)


def parse_args(argv=None) -> argparse.Namespace:
    # Parsed before demo.app is imported: --help and a bad option answer at once.
    parser = argparse.ArgumentParser(prog="python -m demo", description="Serve the ChatRex Gradio demo (chat with box answers, UPN proposals).")
    demo_arguments(parser)
    return parser.parse_args(argv)


args = parse_args()
from .app import serve  # noqa: E402

sys.exit(serve(model=args.model, host=args.host, port=args.port, share=args.share, device=args.device, dtype=args.dtype))
