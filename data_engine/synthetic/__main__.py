"""``python -m data_engine.synthetic``: see ``cli.py``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
