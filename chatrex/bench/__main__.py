"""``python -m chatrex.bench`` (also under ``accelerate launch -m chatrex.bench``)."""

import sys

from .cli import main

sys.exit(main())
