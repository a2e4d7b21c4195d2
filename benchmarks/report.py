"""Shared by the benchmark scripts: print a result as JSON and optionally write it to a file."""

from __future__ import annotations

import json
import os


def emit(result: dict, json_out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if json_out:
        os.makedirs(os.path.dirname(os.path.abspath(json_out)), exist_ok=True)
        with open(json_out, "w") as f:
            f.write(text + "\n")
